"""CrystalNN's bonds for many sites of one structure, from one shared Voronoi tessellation.

pymatgen's ``CrystalNN.get_nn_info`` builds one Voronoi tessellation per site (``VoronoiNN``), which was 63 %
of the validity stage.  :func:`crystalnn_bonds` gives its answer for a set of sites (the symmetry-orbit
representatives :mod:`fw_screen.science.validity` asks for) from one tessellation of the atoms within
:data:`SHARED_RADIUS` (6 Angstrom) of any of them (:func:`shared_voronoi_faces`).  A site's cell from it is
used only where it is provably the cell of CrystalNN's own 7 Angstrom sphere: every face of it belongs to an
atom of that sphere, and every atom of the sphere left out lies farther from each vertex of the cell than
the site does; a cell failing either is tessellated alone from exactly the atoms of CrystalNN's first
sphere; open cells, atoms on top of each other, weights the copy cannot reproduce and species with
oxidation states go to ``CrystalNN.get_nn_info`` itself.  CrystalNN takes no precomputed faces, so its
weighting is repeated in :func:`_crystalnn_choice` for pymatgen's defaults.
tests/test_validity.py compares the result with ``CrystalNN.get_nn_info`` site by site, and the verdicts and
bond scores with CrystaLLM's every-site loop on 2,000 real generations (0 differences).
"""

from __future__ import annotations

import math

import numpy as np
from pymatgen.core import Element, Structure


#: Angstrom: CrystalNN's Voronoi search doubles its radius (7, 14, 28 ... up to the cell diagonal) until a
#: site's cell closes; in a sparse or elongated cell (a 228 A axis) that means Voronoi tessellations of
#: 10^4-10^6 points per site, minutes each.  Beyond this radius there is no bond to judge: the check fails.
MAX_NEIGHBOR_SEARCH = 30.0


class _BoundedSearch(Structure):
    """A Structure whose neighbour spheres are capped at :data:`MAX_NEIGHBOR_SEARCH` (see there)."""

    def get_sites_in_sphere(self, pt, r, *args, **kwargs):
        if r > MAX_NEIGHBOR_SEARCH:
            raise ValueError(f"no closed neighbour shell within {MAX_NEIGHBOR_SEARCH:g} A (a sparse or elongated "
                             f"cell): bonds not assessed")
        return super().get_sites_in_sphere(pt, r, *args, **kwargs)


def _default_radius(specie) -> float | None:
    """CrystalNN's radius for a species without an oxidation state: covalent, else atomic."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    try:
        return CovalentRadius.radius[specie.symbol]
    except Exception:
        return specie.atomic_radius


def _semicircle_integral(bins: list, i: int) -> float:
    """CrystalNN's share of the unit quarter circle between two bond weights (its formula, verbatim)."""
    x1, x2 = bins[i], bins[i + 1]
    area1 = 0.25 * math.pi if x1 == 1 else \
        0.5 * ((x1 * math.sqrt(1 - x1 ** 2)) + math.atan(x1 / math.sqrt(1 - x1 ** 2)))
    area2 = 0.5 * ((x2 * math.sqrt(1 - x2 ** 2)) + math.atan(x2 / math.sqrt(1 - x2 ** 2)))
    return (area1 - area2) / (0.25 * math.pi)


def _crystalnn_choice(cnn, specie, coords, faces: list) -> list | None:
    """The neighbours ``CrystalNN.get_nn_info`` picks for one site from its Voronoi faces, or None where the
    answer must come from CrystalNN itself.

    ``faces`` holds ``(solid_angle, area, neighbour coords, neighbour specie, key)`` per face of the site's
    Voronoi cell, as ``VoronoiNN.get_voronoi_polyhedra`` reports them.  This is ``CrystalNN.get_nn_data`` and
    ``get_nn_info`` for pymatgen's defaults (unweighted CN, no cation/anion targets, sites without oxidation
    states), line by line and in pymatgen's floating-point order: solid-angle weights, porous adjustment
    (solid angle / area), electronegativity weight, distance cutoffs on covalent radii, weights rounded to 3
    decimals, then the coordination number of the largest semicircle integral.  CrystalNN offers no public
    way to hand it precomputed Voronoi faces, so its weighting is repeated here; the tests compare the result
    with ``CrystalNN.get_nn_info`` on real generations.
    """
    max_angle = max(f[0] for f in faces)
    nn = [[f[0] / max_angle, f] for f in faces if f[0] > 0]
    if not nn:
        return None                                   # pymatgen raises here: let it
    if cnn.porous_adjustment:
        for entry in nn:
            entry[0] *= entry[1][0] / entry[1][1]
    x1 = specie.X
    if cnn.x_diff_weight > 0:
        for entry in nn:
            x2 = entry[1][3].X
            chemical = 1 if math.isnan(x1) or math.isnan(x2) else 1 + cnn.x_diff_weight * math.sqrt(abs(x1 - x2) / 3.3)
            entry[0] *= chemical
    if not all(math.isfinite(e[0]) for e in nn):
        return None
    nn.sort(key=lambda e: e[0], reverse=True)
    if nn[0][0] == 0:
        return []
    highest = nn[0][0]
    for entry in nn:
        entry[0] /= highest
    if cnn.distance_cutoffs:
        r1 = _default_radius(specie)
        low_cut, high_cut = cnn.distance_cutoffs
        for entry in nn:
            r2 = _default_radius(entry[1][3])
            if r1 is None or r2 is None:
                return None
            diameter = r1 + r2
            dist = np.linalg.norm(coords - entry[1][2])
            low, high = diameter + low_cut, diameter + high_cut
            weight = 0
            if dist <= low:
                weight = 1
            elif dist < high:
                weight = (math.cos((dist - low) / (high - low) * math.pi) + 1) * 0.5
            entry[0] *= weight
    nn.sort(key=lambda e: e[0], reverse=True)
    if nn[0][0] == 0:
        return []
    for entry in nn:
        entry[0] = round(entry[0], 3)
    nn = [e for e in nn if e[0] > 0]
    bins: list = []
    for entry in nn:
        if not bins or bins[-1] != entry[0]:
            bins.append(entry[0])
    bins.append(0)
    cn_weights, cn_faces = {}, {}
    for i, val in enumerate(bins):
        if val != 0:
            chosen = [e[1] for e in nn if e[0] >= val]
            cn_faces[len(chosen)] = chosen
            cn_weights[len(chosen)] = _semicircle_integral(bins, i)
    cn0 = 1 - sum(cn_weights.values())
    if cn0 > 0:
        cn_faces[0], cn_weights[0] = [], cn0
    return cn_faces[max(cn_weights, key=lambda k: cn_weights[k])]


def _fan_solid_angles_and_volumes(center, a, b, c) -> tuple[np.ndarray, np.ndarray]:
    """Per triangle ``(a, b, c)`` of a face's fan: the solid angle it subtends at ``center`` and the volume of
    the tetrahedron it spans with ``center``; pymatgen's ``solid_angle`` and ``vol_tetra`` term by term
    (including ``solid_angle``'s branches for a zero denominator), for all triangles at once."""
    da, db, dc = a - center, b - center, c - center
    ra, rb, rc = (np.sqrt(np.einsum("ij,ij->i", d, d)) for d in (da, db, dc))
    tp = np.abs(np.einsum("ij,ij->i", da, np.cross(db, dc)))
    de = ra * rb * rc + rc * np.einsum("ij,ij->i", da, db) + rb * np.einsum("ij,ij->i", da, dc) \
        + ra * np.einsum("ij,ij->i", db, dc)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(de == 0, np.where(tp > 0, 0.5 * math.pi, -0.5 * math.pi), np.arctan(tp / de))
    angle = 2 * np.where(angle > 0, angle, angle + math.pi)
    volume = np.abs(np.einsum("ij,ij->i", center - c, np.cross(a - c, b - c))) / 6
    return angle, volume


#: Angstrom: the shared tessellation holds the atoms within this distance of any centre (CrystalNN's sphere
#: is 7 A); a cell from it is used only where the atoms of CrystalNN's sphere left out provably do not cut it
SHARED_RADIUS = 6.0


def shared_voronoi_faces(structure: Structure, centers, cutoff: float, own_sphere: bool = False,
                         shared_radius: float | None = None) -> dict[int, list | None]:
    """{site index: its Voronoi faces, or None}: the cells of all ``centers`` from ONE tessellation.

    CrystalNN tessellates, for every site, the atoms within ``cutoff`` (7 A) of it (its sphere ``P``; its
    membership is decided here by the same ``get_points_in_sphere`` call).  Here the atoms within
    ``shared_radius`` (default :data:`SHARED_RADIUS`) of any centre (``S``) are tessellated once.  The site's
    cell ``C`` from ``S`` is its cell from ``P`` when (1) every face of ``C`` belongs to an atom of ``P``, and
    (2) every atom of ``P`` missing from ``S`` is farther from every vertex of ``C`` than the site (by 1e-6
    A^2, so not even a face of zero size): by (2) adding those atoms leaves ``C`` as it is, and then by (1)
    the halfspaces of the atoms outside ``P`` are all redundant, so dropping them leaves it too.
    Cells failing either (or open, or a structure with atoms on top of each other) give None: CrystalNN's
    own sphere decides those sites (``own_sphere``, or ``CrystalNN`` itself, growing its sphere as it does).
    Each face is ``(solid_angle, area, neighbour coords, neighbour specie, (index, image))`` as ``VoronoiNN`` computes
    them (solid angle and area from the triangle fan of the face, as pymatgen's ``solid_angle`` and
    ``vol_tetra`` do, vectorised).

    ``own_sphere`` (one centre): tessellate exactly the atoms CrystalNN's first sphere holds, in its order
    (by distance), so the cell is CrystalNN's whatever its size; None only where it is open (CrystalNN then
    widens its sphere).
    """
    from scipy.spatial import Voronoi

    lattice = structure.lattice
    frac = structure.frac_coords
    centers = list(centers)
    rows, dists = [], []
    for c in centers:
        _, dist, index, image = lattice.get_points_in_sphere(frac, structure[c].coords, cutoff, zip_results=False)
        image = np.rint(np.asarray(image, dtype=float)).astype(np.int64)
        index = np.asarray(index, dtype=np.int64)
        itself = (index == c) & ~image.any(axis=1)
        if itself.sum() != 1 or np.any(np.asarray(dist)[~itself] < 0.01):
            return dict.fromkeys(centers)             # atoms (nearly) on top of each other: CrystalNN decides
        order = np.argsort(np.asarray(dist), kind="stable")
        rows.append(np.column_stack([index, image])[order])
        dists.append(np.asarray(dist)[order])
    spheres = {c: set(map(tuple, r.tolist())) for c, r in zip(centers, rows)}   # CrystalNN's first sphere
    if own_sphere:
        assert len(centers) == 1, "own_sphere tessellates one centre's sphere"
        keys = rows[0]
        points = frac[keys[:, 0]] + keys[:, 1:]
        cart = np.array([lattice.get_cartesian_coords(f) for f in points])   # as PeriodicNeighbor.coords
    else:
        radius = min(SHARED_RADIUS if shared_radius is None else shared_radius, cutoff)
        near = [r[d <= radius] for r, d in zip(rows, dists)]
        keys = np.unique(np.concatenate(near), axis=0)
        points = frac[keys[:, 0]] + keys[:, 1:]
        cart = lattice.get_cartesian_coords(points)
    try:
        voro = Voronoi(cart)
    except Exception:
        return dict.fromkeys(centers)
    position = {tuple(k): i for i, k in enumerate(keys.tolist())}
    ridge_points = voro.ridge_points
    vertices = voro.vertices
    species = structure.species
    out: dict[int, list | None] = {}
    for n, c in enumerate(centers):
        p = position[(c, 0, 0, 0)]
        center = lattice.get_cartesian_coords(points[p])
        ridges = np.flatnonzero((ridge_points == p).any(axis=1)).tolist()
        fans, others = [], []
        for k in ridges:
            vind = voro.ridge_vertices[k]
            if -1 in vind:
                break                                 # an open cell: CrystalNN widens its sphere
            a, b = ridge_points[k]
            others.append(int(a if b == p else b))
            fans.extend((len(others) - 1, vind[0], j, m) for j, m in zip(vind[1:-1], vind[2:]))
        else:
            if ridges and fans:
                fan = np.asarray(fans, dtype=np.int64)
                if own_sphere or (all(tuple(keys[o].tolist()) in spheres[c] for o in others)
                                  and _left_out_do_not_cut(lattice, frac, rows[n], position, center,
                                                           vertices[np.unique(fan[:, 1:])])):
                    angle, volume = _fan_solid_angles_and_volumes(center, vertices[fan[:, 1]], vertices[fan[:, 2]],
                                                                  vertices[fan[:, 3]])
                    angles = np.bincount(fan[:, 0], weights=angle, minlength=len(others))
                    volumes = np.bincount(fan[:, 0], weights=volume, minlength=len(others))
                    faces = []
                    for f, other in enumerate(others):
                        coords = lattice.get_cartesian_coords(points[other])
                        area = 3 * volumes[f] / (np.linalg.norm(center - coords) / 2)
                        faces.append((angles[f], area, coords, species[keys[other, 0]], tuple(keys[other].tolist())))
                    out[c] = faces
                    continue
        out[c] = None                                 # open, or reaching atoms outside CrystalNN's sphere
    return out


def _left_out_do_not_cut(lattice, frac, sphere, position: dict, center, cell_vertices) -> bool:
    """True where no atom of CrystalNN's sphere (``sphere``: index and image rows) missing from the shared
    tessellation (``position``) cuts the cell: every vertex of the cell is nearer the centre than the atom,
    by a margin (a tie would be a face of zero size in CrystalNN's own tessellation)."""
    missing = [k for k in sphere.tolist() if tuple(k) not in position]
    if not missing:
        return True
    missing = np.asarray(missing, dtype=np.int64)
    atoms = lattice.get_cartesian_coords(frac[missing[:, 0]] + missing[:, 1:])
    to_centre = ((cell_vertices - center) ** 2).sum(axis=1)
    to_atoms = ((cell_vertices[:, None, :] - atoms[None, :, :]) ** 2).sum(axis=2)
    return bool((to_atoms - to_centre[:, None] > 1e-6).all())


def crystalnn_bonds(structure: Structure, centers, shared_voronoi: bool = True) -> dict[int, list]:
    """{site index: the sites CrystalNN bonds it to (``PeriodicNeighbor``s, its own images left out)}:
    ``CrystalNN().get_nn_info`` for each of ``centers``.

    With ``shared_voronoi`` the Voronoi cells come from one tessellation (:func:`shared_voronoi_faces`) and
    CrystalNN's weighting is applied to them (:func:`_crystalnn_choice`); a site whose cell reaches beyond
    what that tessellation proves is tessellated alone, from exactly the atoms of CrystalNN's first sphere;
    open cells, atoms on top of each other, weights the copy cannot reproduce and structures with oxidation
    states go to ``CrystalNN.get_nn_info``.  Neighbour searches are bounded by
    :data:`MAX_NEIGHBOR_SEARCH` either way.
    """
    from pymatgen.analysis.local_env import CrystalNN
    from pymatgen.core.structure import PeriodicNeighbor

    cnn = CrystalNN()
    centers = list(centers)
    structure = structure.copy()
    structure.__class__ = _BoundedSearch
    fast = shared_voronoi and not cnn.weighted_cn and not cnn.cation_anion and \
        all(isinstance(sp, Element) for sp in structure.species)
    faces = shared_voronoi_faces(structure, centers, cnn.search_cutoff) if fast else dict.fromkeys(centers)
    lattice = structure.lattice
    out = {}
    for i in centers:
        chosen = None
        if fast and faces[i] is None:       # a cell reaching beyond the shared tessellation: CrystalNN's sphere
            faces[i] = shared_voronoi_faces(structure, [i], cnn.search_cutoff, own_sphere=True)[i]
        if faces[i] is not None:
            chosen = _crystalnn_choice(cnn, structure[i].specie, structure[i].coords, faces[i])
        if chosen is None:
            out[i] = [info["site"] for info in cnn.get_nn_info(structure, i) if info["site_index"] != i]
            continue
        bonded = []
        for face in chosen:
            index, *image = face[4]
            if index != i:
                site = structure[index]
                bonded.append(PeriodicNeighbor(site.species, site.frac_coords + image, lattice, index=index,
                                               image=tuple(image)))
        out[i] = bonded
    return out
