"""The campaign HTML report (fw_screen/reporting/report/) on the real server: its content against the analysis
functions, its CIF downloads against the stored structures, its rendering in a real headless Chromium
(Debian's ``chromium`` driven by playwright: no console errors, every plot painted), the notes of a
campaign whose later stages have not run, and ``fw-screen report`` as a user runs it.

The campaign: 41 real CrystaLLM-pi generations and the 16 blocks of ``crystallm_pi_16.cif`` through the
real ingest, validity and uniqueness runners.  The ML and DFT numbers after that are STAND-IN numbers
written by this test (seeded random e_above_hull and band gaps, made-up but self-consistent DFT total
energies of the candidates and of their reference phases), put on the candidates through the store's
state machine (``ResultsStore.transition``) in the fields and shapes the ML and DFT stages leave; the DFT
hulls are then computed from those energies by the real ``campaign.update_dft_hulls``.  Real ML and DFT
results are covered by tests/test_ml_workflow.py and tests/test_dft_workflow.py (whose Li-O test builds
this report from real Quantum ESPRESSO results).
"""

from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.structure_matcher import StructureMatcher
from pymatgen.io.cif import CifParser

from fw_screen import stages as cp
from fw_screen.science import band_gap as prop
from fw_screen import state as st
from fw_screen.reporting.tables import AnalysisError, funnel_yields, ml_vs_dft
from fw_screen.dft.hull import molecule_in_box
from fw_screen.reporting.report import SECTIONS, build_report
from fw_screen.spec import load_spec

DATA = Path(__file__).parent / "data"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROTOCOL = "standin-protocol"

pytestmark = pytest.mark.filterwarnings("ignore")


# ------------------------------------------------------------------------------------ the campaign
def _store(path: Path):
    from fw_screen.store import ResultsStore

    return ResultsStore.from_file(str(path))


def run_cheap_stages(store, spec: dict, *inputs: Path) -> None:
    """Ingest, validity and uniqueness exactly as the cheap Fireworks run them."""
    for path in inputs:
        summary = cp.run_ingest(store, path, spec)
        for batch in summary["batches"]:
            cp.run_validity(store, spec["campaign"], batch)
    for shard in range(spec["dedup_shards"]):
        cp.run_uniqueness(store, spec["campaign"], shard)


def _ml_fields(doc: dict, spec: dict, rng) -> dict:
    """STAND-IN ML stage output for one novel candidate (the shape stability_fields stores)."""
    s = Structure.from_dict(doc["structure_reduced"])
    relaxed = s.copy()
    relaxed.scale_lattice(s.volume * float(rng.uniform(0.97, 1.05)))
    e = float(rng.gamma(1.6, 0.07) - 0.03)
    target = ((doc.get("targets") or {}).get("band_gap") or {}).get("value")  # CIF inputs carry no condition
    gap = float(max(0.0, (rng.uniform(0.5, 4.0) if target is None else target) + rng.normal(0.0, 0.9)))
    thr, tol = spec["ml"]["stability_threshold"], spec["property"]["band_gap_tolerance"]
    return {"ml": {
        "potential": "chgnet", "relax": {"status": "converged", "steps": int(rng.integers(20, 200))},
        "structure_relaxed": relaxed.as_dict(),
        "hull": {"e_above_hull": e, "decomposition": [{"entry_id": "stand-in", "formula": s.composition.reduced_formula,
                                                       "fraction": 1.0}]},
        "e_above_hull": e, "e_above_hull_unrelaxed": e + 0.04, "stable": e <= thr,
        "band_gap": {"band_gap": gap, "structure": "relaxed"},
        "hits": prop.target_hits(gap, e, doc.get("targets"), tol, thr)}}


def _energy(structure: Structure, mu: dict, formation: float) -> float:
    """A made-up total energy: elemental chemical potentials plus a formation energy per atom."""
    comp = structure.composition
    return float(sum(mu[el.symbol] * n for el, n in comp.items()) + formation * comp.num_atoms)


MU = {"Ca": -1.95, "F": -1.80, "K": -1.05, "Al": -3.70, "Be": -3.70}
REFERENCES = {  # key -> (structure, formation energy per atom, eV, before the MP2020 fluoride correction)
    "ca": (Structure(Lattice.cubic(5.58), ["Ca"] * 4, [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]), 0.0),
    "f2": (molecule_in_box("F", 8.0), 0.0),
    "caf2": (Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.46), ["Ca", "F"], [[0, 0, 0], [.25, .25, .25]]
                                       ).get_primitive_structure(), -3.65),
    "k": (Structure(Lattice.cubic(5.23), ["K", "K"], [[0, 0, 0], [.5, .5, .5]]), 0.0),
    "al": (Structure(Lattice.cubic(4.04), ["Al"] * 4, [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]), 0.0),
    "kf": (Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.35), ["K", "F"], [[0, 0, 0], [.5, .5, .5]]
                                     ).get_primitive_structure(), -2.85),
    "alf3": (Structure(Lattice.cubic(3.6), ["Al", "F", "F", "F"], [[0, 0, 0], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]),
             -3.05),
}
SYSTEM_REFS = {"Ca-F": ["ca", "f2", "caf2"], "Al-F-K": ["k", "al", "f2", "kf", "alf3"]}


def _add_dft_references(store) -> None:
    docs = []
    for key, (s, ef) in REFERENCES.items():
        docs.append({"_id": f"{PROTOCOL}:{key}", "protocol_id": PROTOCOL, "key": key,
                     "formula": s.composition.reduced_formula, "kind": "molecule" if key == "f2" else "crystal",
                     "status": "done", "attempts": 1,
                     "result": {"structure_relaxed": s.as_dict(), "energy_total": _energy(s, MU, ef)}})
    store.dft_references.insert_many(docs)


def add_stand_in_ml_and_dft(store, spec: dict, seed: int = 7) -> dict:
    """STAND-IN numbers for the later stages (see the module docstring): every novel candidate gets ML
    results (KAgO2 ones: no reference entries; one Sr: a failed relaxation); CaF2 and KAlF4 candidates are
    promoted and get DFT results whose hulls the real update_dft_hulls computes; one promoted candidate
    stays pending and one fails DFT.  Returns {"dft_done": [ids], ...}."""
    campaign = spec["campaign"]
    rng = np.random.default_rng(seed)
    novel = list(store.candidates_for({"campaign": campaign, "status": st.NOVEL},
                                      {"structure_reduced": 1, "targets": 1, "reduced_formula": 1}))
    updates, failed_one = [], False
    for doc in novel:
        if doc["reduced_formula"] == "KAgO2":
            gap = float(rng.uniform(0, 3))
            updates.append((doc["_id"], st.NOVEL, st.NO_REFERENCE, {"ml": {
                "potential": "chgnet", "reason": "no reference for Ag, K (chemical system Ag-K-O)",
                "band_gap": {"band_gap": gap, "structure": "unrelaxed"},
                "hits": prop.target_hits(gap, None, doc.get("targets"), spec["property"]["band_gap_tolerance"],
                                         spec["ml"]["stability_threshold"])}}))
        elif doc["reduced_formula"] == "Sr" and not failed_one:
            failed_one = True
            updates.append((doc["_id"], st.NOVEL, st.ML_FAILED, {"ml": {
                "potential": "chgnet", "reason": "relaxation exploded: max force 512 eV/A"}}))
        else:
            updates.append((doc["_id"], st.NOVEL, st.ML_DONE, _ml_fields(doc, spec, rng)))
    assert store.transition(updates, "ml") == len(updates)

    _add_dft_references(store)
    chosen: dict[str, list] = {"CaF2": [], "KAlF4": []}
    for d in store.candidates_for({"campaign": campaign, "status": st.ML_DONE,
                                   "reduced_formula": {"$in": list(chosen)}},
                                  {"reduced_formula": 1, "ml": 1, "targets": 1, "elements": 1, "chemsys": 1}):
        chosen[d["reduced_formula"]].append(d)
    plan = [(chosen["CaF2"][0], 0.03, "done"), (chosen["CaF2"][1], 0.19, "done"), (chosen["KAlF4"][0], 0.02, "done"),
            (chosen["KAlF4"][1], None, "failed"), (chosen["KAlF4"][2], None, "pending")]
    out: dict = {"dft_done": [], "dft_failed": [], "promoted": []}
    formation_ref = {"CaF2": -3.65, "KAlF4": (2 * -2.85 + 4 * -3.05) / 6}  # KF + AlF3 tie line, per atom
    for rank, (d, above, fate) in enumerate(plan, 1):
        promo = {"promotion": {"reason": f"stand-in: rank {rank} by ML e_above_hull", "rank": rank,
                               "condition": d["targets"]["band_gap"]["value"]}}
        assert store.transition([(d["_id"], st.ML_DONE, st.PROMOTED, promo)], "promotion") == 1
        if fate == "pending":
            out["promoted"].append(d["_id"])
            continue
        s = Structure.from_dict(d["ml"]["structure_relaxed"])
        if fate == "failed":
            assert store.transition([(d["_id"], st.PROMOTED, st.DFT_FAILED, {"dft": {
                "code": "qe", "reason": "pw.x: convergence NOT achieved after 100 iterations"}})], "dft") == 1
            out["dft_failed"].append(d["_id"])
            continue
        gap = float(max(0.0, d["ml"]["band_gap"]["band_gap"] + rng.normal(0.3, 0.4)))
        system = "-".join(sorted(d["elements"]))
        refs = [f"{PROTOCOL}:{k}" for k in SYSTEM_REFS[system]]
        dft = {"code": "qe", "system": system, "structure_relaxed": s.as_dict(),
               "energy_total": _energy(s, MU, formation_ref[d["reduced_formula"]] + above),
               "band_gap": {"band_gap": gap, "is_metal": gap == 0.0}, "protocol_id": PROTOCOL,
               "hits": prop.target_hits(gap, None, d["targets"], spec["property"]["band_gap_tolerance"],
                                        spec["dft"]["stability_threshold"]),
               "hull_status": "waiting", "references": refs}
        assert store.transition([(d["_id"], st.PROMOTED, st.DFT_DONE, {"dft": dft})], "dft") == 1
        out["dft_done"].append(d["_id"])
    assert cp.update_dft_hulls(store, PROTOCOL) == len(out["dft_done"])  # the real DFT-hull code
    return out


@pytest.fixture(scope="module")
def full(new_launchpad_file, tmp_path_factory):
    """A campaign through every stage (cheap ones real, ML/DFT stand-in) and its report, built once."""
    folder = tmp_path_factory.mktemp("report")
    lp_file = new_launchpad_file(folder)
    store = _store(lp_file)
    cp.load_references(store, DATA / "mp_Li-Co-Ni-O_5entries.json.gz")
    spec = load_spec(campaign="full", batch_size=20, dedup_shards=2)
    run_cheap_stages(store, spec, DATA / "crystallm_pi_valid_41.parquet", DATA / "crystallm_pi_16.cif")
    fates = add_stand_in_ml_and_dft(store, spec)
    t0 = time.perf_counter()
    summary = build_report(store, "full", folder / "report_full.html", max_per_group=200)
    seconds = time.perf_counter() - t0
    yield {"store": store, "lp_file": lp_file, "folder": folder, "summary": summary, "fates": fates,
           "html": Path(summary["path"]).read_text(encoding="utf-8"), "seconds": seconds}
    store.db.client.drop_database(store.db.name)


def _section(page: str, key: str) -> str:
    m = re.search(rf"<section id='{key.replace('_', '-')}'[^>]*>(.*?)</section>", page, re.S)
    assert m, f"section {key} missing"
    return m.group(0)


# ------------------------------------------------------------------------------------------ content
def test_report_sections_numbers_and_cifs(full):
    summary, page, store = full["summary"], full["html"], full["store"]
    assert summary["drawn"] == list(SECTIONS), summary["skipped"]
    assert summary["skipped"] == {}
    assert set(summary["timings"]) == set(SECTIONS)
    assert full["seconds"] < 60
    assert sorted(summary["phase_diagrams"]) == ["Al-F-K", "Ca-F"]
    for key in SECTIONS:
        assert "data-state='drawn'" in _section(page, key)

    # self-contained: no resource outside the file, no script
    assert not re.search(r"""(?:src|href)\s*=\s*['"]?(?:https?:)?//""", page, re.I)
    assert not re.search(r"https?://", page)
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page

    # the yields table holds funnel_yields' numbers, overall and per condition
    y = funnel_yields(store, "full")
    table = re.search(r"<table id='yields'.*?</table>", page, re.S).group(0)
    rows = {m.group(1): m.group(2) for m in re.finditer(r"<tr data-condition='([^']*)'>(.*?)</tr>", table, re.S)}
    expected = {"all": (y["n"], y["overall"])}
    expected.update({("none" if r["condition"] is None else repr(r["condition"])): (r["n"], {t: r[t] for t in y["thresholds"]})
                     for r in y["by_condition"]})
    assert set(rows) == set(expected) and len(rows) >= 3
    for cond, (n, per_thr) in expected.items():
        cells = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
            r"data-key='([^']+)'(?: data-rate='([^']*)')? data-count='([^']*)'", rows[cond])}
        assert cells["n"] == (None, str(n))
        first = per_thr[y["thresholds"][0]]
        for key, rate_key, count_key in (("V", "V", "valid"), ("VU", "VU", "valid_unique"), ("VUN", "VUN", "vun"),
                                         ("hit_among_valid_evaluated", "band_gap_hit_among_valid_evaluated",
                                          "valid_band_gap_hits")):
            assert cells[key] == (repr(first["rates"][rate_key]), str(first["counts"][count_key])), (cond, key)
        for t in y["thresholds"]:
            c, r = per_thr[t]["counts"], per_thr[t]["rates"]
            assert cells[f"VSUN@{t:g}"] == (repr(r["VSUN"]), str(c["vsun"]))
            assert cells[f"hit_among_VSUN@{t:g}"] == (repr(r["band_gap_hit_among_vsun"]), str(c["vsun_band_gap_hits"]))
    assert y["overall"][0.1]["counts"]["vsun"] > 0 and y["n"] == 57

    # ML vs DFT: the MAE printed is analysis.ml_vs_dft's
    m = ml_vs_dft(store, "full")
    assert m["n_dft"] == 3
    errors = re.search(r"<table class='small' id='parity-errors'>.*?</table>", page, re.S).group(0)
    assert f"{m['e_above_hull']['mae']:.3f}" in errors and f"{m['band_gap']['mae']:.3f}" in errors
    pd_section = _section(page, "phase_diagrams")
    assert pd_section.count("<img class=\"plot\"") == 2
    for cid in full["fates"]["dft_done"]:
        assert html.escape(cid) in pd_section

    # candidates table: DFT-done first by DFT e_hull, then ML-done by ML e_hull; each CIF is the stored structure
    table = re.search(r"<table id='candidates-table'.*?</table>", page, re.S).group(0)
    ids = re.findall(r"<tr data-id='([^']+)'>", table)
    assert len(ids) == 20 and ids[:3] == sorted(full["fates"]["dft_done"], key=lambda i: store.candidates.find_one(
        {"_id": i})["dft"]["e_above_hull"])
    ml = [store.candidates.find_one({"_id": i})["ml"]["e_above_hull"] for i in ids[3:]]
    assert ml == sorted(ml)
    links = re.findall(r"<a class='cif' download='([^']+)' href='data:chemical/x-cif;base64,([^']+)'>", table)
    assert len(links) == len(ids)
    structures = store.structures_of(ids)
    matcher = StructureMatcher(primitive_cell=False, scale=False, attempt_supercell=False)
    for (name, b64), cid in zip(links, ids):
        assert name == cid.replace(":", "_") + ".cif"
        cif = base64.b64decode(b64).decode()
        parsed = CifParser.from_str(cif).parse_structures(primitive=False)[0]
        stored = Structure.from_dict(structures[cid])
        assert len(parsed) == len(stored) and parsed.composition == stored.composition
        assert np.allclose(parsed.lattice.abc, stored.lattice.abc, atol=1e-4)
        assert matcher.fit(parsed, stored), cid
    doc = store.candidates.find_one({"_id": ids[0]})
    assert np.allclose(Structure.from_dict(structures[ids[0]]).lattice.abc,
                       Structure.from_dict(doc["dft"]["structure_relaxed"]).lattice.abc)  # the DFT-relaxed one


# ------------------------------------------------------------------------------------------ browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make chromium)")
def test_report_renders_in_headless_chromium(full, tmp_path):
    from playwright.sync_api import sync_playwright

    path = Path(full["summary"]["path"]).resolve()
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})  # fresh profile
            page = context.new_page()
            page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error"
                    else None)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(path.as_uri(), wait_until="load")
            plots = page.locator("img, svg")
            n = plots.count()
            assert n >= 6  # funnel, e_hull, band gap, parity, 2 phase diagrams, chemical space
            for i in range(n):
                el = plots.nth(i)
                el.scroll_into_view_if_needed()
                box = el.bounding_box()
                assert box and box["width"] > 50 and box["height"] > 50, (i, box)
                if el.evaluate("e => e.tagName") == "IMG":
                    assert el.evaluate("e => e.complete && e.naturalWidth > 0 && e.naturalHeight > 0"), i
            assert page.locator("section[data-state='drawn']").count() == len(SECTIONS)
            assert page.locator("a.cif").count() == 20
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), [u for u in requests if not u.startswith(
        ("file:", "data:"))]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 100_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 1000 and height > 3000
    shutil.copy(shot, full["folder"] / "report.png")


# ---------------------------------------------------------------------------------- missing stages
def test_empty_and_unknown_campaigns_are_clear_errors(store, spec):
    with pytest.raises(AnalysisError, match=r"no campaign 'nope'.*none yet"):
        build_report(store, "nope")
    store.register_campaign(spec)
    with pytest.raises(AnalysisError, match=r"no campaign 'nope'.*test"):
        build_report(store, "nope")
    with pytest.raises(AnalysisError, match=r"campaign 'test' has no candidates yet.*fw-screen submit"):
        build_report(store, "test")


def test_cheap_stages_only_explain_what_is_missing(store, tmp_path):
    spec = load_spec(campaign="cheap", batch_size=20, dedup_shards=1)
    run_cheap_stages(store, spec, DATA / "crystallm_pi_16.cif")
    summary = build_report(store, "cheap", tmp_path / "r.html", chemical_space=False, progress=True)
    page = Path(summary["path"]).read_text()
    assert summary["drawn"] == ["campaign", "funnel", "metrics"]  # the cheap metrics need no ML
    assert summary["skipped"]["chemical_space"].startswith("switched off")
    for key in ("e_hull", "band_gap", "parity", "phase_diagrams", "candidates"):
        assert "the ML stage has not run" in summary["skipped"][key], summary["skipped"][key]
        note = _section(page, key)
        assert "data-state='skipped'" in note and "fw-screen run -n 2 --category ml" in note
    assert "fw-screen ml -c cheap" in _section(page, "e_hull")
    assert "<img" in _section(page, "funnel")

    # ML done but nothing promoted: the DFT sections name the promotion command
    add_ml = [(d["_id"], st.NOVEL, st.ML_DONE, _ml_fields(d, spec, np.random.default_rng(1)))
              for d in store.candidates_for({"campaign": "cheap", "status": st.NOVEL},
                                            {"structure_reduced": 1, "targets": 1})]
    store.transition(add_ml, "ml")
    summary = build_report(store, "cheap", tmp_path / "r2.html", chemical_space=False)
    page = Path(summary["path"]).read_text()
    assert {"e_hull", "band_gap", "candidates"} <= set(summary["drawn"])
    assert summary["skipped"]["parity"] == summary["skipped"]["phase_diagrams"] == "no candidate promoted to DFT"
    assert "fw-screen promote cheap" in _section(page, "parity")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_report(full, tmp_path):
    exe = Path(sys.executable).parent / "fw-screen"
    out = subprocess.run([str(exe), "report", "full", "-l", str(full["lp_file"]), "--top", "5",
                          "--no-chemical-space"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path = tmp_path / "report_full.html"
    assert path.is_file() and str(path.name) in out.stdout
    assert "skipped: switched off" in out.stdout and "Top candidates" in out.stdout
    assert len(re.findall(r"<tr data-id=", path.read_text())) == 5
    bad = subprocess.run([str(exe), "report", "missing", "-l", str(full["lp_file"]), "-o", str(tmp_path / "x.html")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("fw-screen: error: no campaign 'missing'")
    assert not (tmp_path / "x.html").exists()
