"""Ingest: readers for every accepted input kind, CrystaLLM post-processing, condition decoding, records."""

from __future__ import annotations

import io
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.structure_matcher import StructureMatcher
from pymatgen.symmetry.groups import SpaceGroup

from fw_screen.science.ingest import (
    KEPT_PREFIX,
    IngestError,
    candidate_document,
    candidate_id,
    decode_conditions,
    iter_candidates,
    postprocess,
    read_inputs,
    split_blocks,
)
from fw_screen.spec import load_spec
from fw_screen.science.validity import check_cif, parse_structure

DATA = Path(__file__).parent / "data"
RAW_NACL = DATA / "raw_crystallm_nacl.cif"
GENERATIONS = DATA / "crystallm_pi_16.cif"
TABLE = DATA / "crystallm_pi_valid_41.parquet"
MP = DATA / "mp"

#: ../shared/data/README.md: normalised band-gap targets -> eV (the independent source for decoding)
README_BAND_GAP = {0.05: 0.072, 0.10: 0.180, 0.25: 0.681, 0.40: 1.547, 0.50: 2.440, 0.60: 3.720, 0.75: 6.776,
                   0.90: 12.145}


@pytest.fixture(scope="module")
def spec():
    return load_spec(campaign="ingest-test")


@pytest.fixture(scope="module")
def ingest(spec):
    return spec["ingest"]


def cif_text(name: str) -> str:
    return (MP / name).read_text()


# ----------------------------------------------------------------------------------------- folders
def test_folder_of_cifs_nested(tmp_path, ingest):
    root = tmp_path / "gen"
    (root / "sub" / "deeper").mkdir(parents=True)
    files = {
        "LiCoO2.cif": cif_text("LiCoO2_mp-22526.cif"),
        "sub/Li2O.cif": cif_text("Li2O_mp-1960.cif"),
        "sub/deeper/Fe2O3.CIF": cif_text("Fe2O3_mp-19770.cif"),   # suffix matched case-insensitively
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    two_blocks = cif_text("NaFePO4_mp-19226.cif") + "\n" + cif_text("LiNiO2_mp-865631.cif")
    (root / "sub" / "two.cif").write_text(two_blocks)
    (root / "notes.txt").write_text("data_NotACif\n")                 # not a CIF file: ignored
    (root / "sub" / "table.csv").write_text("a,b\n1,2\n")               # neither

    raws = list(read_inputs(root, ingest))
    by_source = {(r.source["file"], r.source.get("block")): r for r in raws}
    assert sorted(by_source) == sorted([("LiCoO2.cif", None), ("sub/Li2O.cif", None),
                                        ("sub/deeper/Fe2O3.CIF", None), ("sub/two.cif", 0), ("sub/two.cif", 1)])
    for rel, text in files.items():
        raw = by_source[(rel, None)]
        assert raw.text == text and raw.error is None and raw.nbytes == len(text.encode())
    assert by_source[("sub/two.cif", 0)].text + by_source[("sub/two.cif", 1)].text == two_blocks
    assert by_source[("sub/two.cif", 1)].text.startswith("data_LiNiO2")


def test_folder_links_out_and_special_files_are_recorded_not_read(tmp_path, ingest):
    import os

    root = tmp_path / "gen"
    root.mkdir()
    secret = tmp_path / "secret.cif"
    secret.write_text("data_secret\n_password hunter2\n")
    (root / "a.cif").write_text(cif_text("Li2O_mp-1960.cif"))
    (root / "inside.cif").symlink_to(root / "a.cif")          # a link within the folder is an ordinary input
    (root / "out.cif").symlink_to(secret)                     # one out of it is not followed
    (root / "passwd.cif").symlink_to("/etc/passwd")
    (root / "broken.cif").symlink_to(root / "missing.cif")
    os.mkfifo(root / "fifo.cif")                              # opening it would block forever
    raws = {r.source["file"]: r for r in read_inputs(root, ingest)}
    assert set(raws) == {"a.cif", "inside.cif", "out.cif", "passwd.cif", "broken.cif", "fifo.cif"}
    assert raws["inside.cif"].text == raws["a.cif"].text == cif_text("Li2O_mp-1960.cif")
    for name in ("out.cif", "passwd.cif"):
        assert raws[name].text == "" and raws[name].error.startswith("symbolic link to a file outside")
    for name in ("broken.cif", "fifo.cif"):
        assert raws[name].text == "" and raws[name].error.startswith("not a regular file")
    assert "hunter2" not in repr(raws) and "root:" not in repr(raws)


def test_oversized_file_is_recorded_from_its_head_only(tmp_path, ingest, monkeypatch):
    """A huge file (here 3 GB, sparse) must not be loaded into memory to keep its first 4 kB."""
    folder = tmp_path / "big"
    folder.mkdir()
    head = cif_text("LiCoO2_mp-22526.cif")
    huge = folder / "huge.cif"
    with open(huge, "wb") as fh:
        fh.write(head.encode())
        fh.truncate(3 * 1024 ** 3)
    (folder / "small.cif").write_text(head)
    real_read_bytes = Path.read_bytes

    def guarded(self):
        assert self.name != "huge.cif", "the oversized file was read in full"
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", guarded)
    raws = {r.source["file"]: r for r in read_inputs(folder, ingest)}
    assert raws["small.cif"].error is None and raws["small.cif"].text == head
    big = raws["huge.cif"]
    assert big.error == f"input too large: {3 * 1024 ** 3} bytes > max_cif_bytes={ingest['max_cif_bytes']}"
    assert big.nbytes == 3 * 1024 ** 3
    assert big.text == (head.encode() + b"\0" * KEPT_PREFIX)[:KEPT_PREFIX].decode()


def test_missing_or_empty_inputs_raise(tmp_path, ingest):
    with pytest.raises(IngestError, match="input not found"):
        list(read_inputs(tmp_path / "nope", ingest))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no cifs here")
    with pytest.raises(IngestError, match="holds no .cif files"):
        list(read_inputs(tmp_path / "empty", ingest))


# ------------------------------------------------------------------------------------ multi-block
def test_multiblock_file_splits_into_its_blocks_losslessly(ingest):
    text = GENERATIONS.read_text()
    names = [line[len("data_"):] for line in text.splitlines() if line.startswith("data_")]
    assert len(names) == 16
    raws = list(read_inputs(GENERATIONS, ingest))
    assert [r.source for r in raws] == [{"file": GENERATIONS.name, "block": i} for i in range(16)]
    assert "".join(r.text for r in raws) == text
    for raw, name in zip(raws, names):
        assert raw.text.startswith(f"data_{name}\n")
        assert raw.text.count("data_") == 1
        assert raw.nbytes == len(raw.text.encode())


def test_split_blocks_keeps_leading_comments_with_the_first_block():
    text = "# made by hand\n\ndata_A\n_cell_length_a 1\n  data_B\n_cell_length_a 2\n"
    assert split_blocks(text) == ["# made by hand\n\ndata_A\n_cell_length_a 1\n", "  data_B\n_cell_length_a 2\n"]
    assert split_blocks("data_A\n_x 1\n") == ["data_A\n_x 1\n"]
    # "data_" inside a value is not a block start
    assert len(split_blocks("data_A\n_note 'see data_B'\n")) == 1


# ------------------------------------------------------------------------------------------ tar
def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_archive(path: Path, mode: str) -> dict[str, str]:
    members = {
        "LiCoO2.cif": cif_text("LiCoO2_mp-22526.cif"),
        "nested/dir/Li2O.cif": cif_text("Li2O_mp-1960.cif"),
        "../evil.cif": cif_text("Fe2O3_mp-19770.cif"),
        "/tmp/fw_screen_absolute_evil.cif": cif_text("NaFePO4_mp-19226.cif"),
        "../../multi.cif": cif_text("LiNiO2_mp-865631.cif") + cif_text("LiCoO2_mp-22526.cif"),
    }
    with tarfile.open(path, mode) as tar:
        for name, text in members.items():
            _add(tar, name, text.encode())
        _add(tar, "README.txt", b"not a cif")
        link = tarfile.TarInfo("link.cif")          # a symlink member must not be followed
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    return members


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_tar_members_are_read_in_memory_never_extracted(tmp_path, monkeypatch, ingest, suffix, mode):
    outside = Path("/tmp/fw_screen_absolute_evil.cif")
    assert not outside.exists()
    box = tmp_path / "box"
    (box / "work").mkdir(parents=True)
    archive = box / f"gen{suffix}"
    members = _make_archive(archive, mode)
    with tarfile.open(archive) as tar:      # the archive really holds the hostile names
        assert {"../evil.cif", "/tmp/fw_screen_absolute_evil.cif"} <= set(tar.getnames())
    before_box, before_parent = _tree(box), set(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(box / "work")

    raws = list(read_inputs(archive, ingest))

    assert _tree(box) == before_box                       # nothing written next to or inside the archive
    assert set(p.name for p in tmp_path.iterdir()) == before_parent   # nor one level up ("../evil.cif")
    assert not outside.exists()                           # nor at the absolute path
    got = {(r.source["member"], r.source.get("block")): r.text for r in raws}
    assert all(r.source["file"] == archive.name for r in raws)
    assert set(got) == {("LiCoO2.cif", None), ("nested/dir/Li2O.cif", None), ("../evil.cif", None),
                        ("/tmp/fw_screen_absolute_evil.cif", None), ("../../multi.cif", 0),
                        ("../../multi.cif", 1), ("link.cif", None)}
    link = next(r for r in raws if r.source["member"] == "link.cif")   # recorded, never followed
    assert link.text == "" and link.error == "tar member is a symbolic link to '/etc/passwd', not a regular file: not read"
    for name in ("LiCoO2.cif", "nested/dir/Li2O.cif", "../evil.cif", "/tmp/fw_screen_absolute_evil.cif"):
        assert got[(name, None)] == members[name]
    assert got[("../../multi.cif", 0)] + got[("../../multi.cif", 1)] == members["../../multi.cif"]


def test_two_tar_members_with_the_same_name_stay_two_candidates(tmp_path, spec):
    text = cif_text("Li2O_mp-1960.cif").encode()
    path = tmp_path / "twice.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "gen/a.cif", text)
        _add(tar, "gen/a.cif", text)  # tar allows a name twice; both are inputs
    docs = [candidate_document(raw, "c", spec) for raw in read_inputs(path, spec["ingest"])]
    assert len(docs) == 2 and len({d["_id"] for d in docs}) == 2


def test_oversized_tar_member_is_recorded_not_read(tmp_path):
    ingest = load_spec(ingest={"max_cif_bytes": 1000})["ingest"]
    big = cif_text("Li2O_mp-1960.cif")                  # 5.3 kB > 1000 bytes
    small = cif_text("LiNiO2_mp-865631.cif")            # 963 bytes
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "big.cif", big.encode())
        _add(tar, "small.cif", small.encode())
    raws = {r.source["member"]: r for r in read_inputs(archive, ingest)}
    assert raws["small.cif"].error is None and raws["small.cif"].text == small
    assert raws["big.cif"].error == f"input too large: {len(big.encode())} bytes > max_cif_bytes=1000"
    assert raws["big.cif"].nbytes == len(big.encode())
    assert raws["big.cif"].text == big[:KEPT_PREFIX]


def _special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.devmajor, info.devminor = 1, 3      # /dev/null's numbers, for the device members
    tar.addfile(info)


def test_hostile_tar_members_are_recorded_never_followed(tmp_path, monkeypatch, spec):
    """Traversal names, absolute names, symlinks, hard links, devices, FIFOs: every regular CIF member is a
    candidate, every other CIF-named member a candidate with the reason, nothing is written anywhere."""
    from fw_screen.stages import validity_fields

    box = tmp_path / "box"
    (box / "work").mkdir(parents=True)
    archive = box / "hostile.tar"
    good = cif_text("Li2O_mp-1960.cif")
    regular = {"../../evil.cif": good, "/tmp/fw_screen_abs_evil.cif": good, "ok/../../../x.cif": good}
    special = {"sym.cif": (tarfile.SYMTYPE, "/etc/passwd", "symbolic link to '/etc/passwd'"),
               "up.cif": (tarfile.SYMTYPE, "../../../../etc/shadow", "symbolic link to '../../../../etc/shadow'"),
               "hard.cif": (tarfile.LNKTYPE, "../../evil.cif", "hard link to '../../evil.cif'"),
               "chr.cif": (tarfile.CHRTYPE, "", "device file"),
               "blk.cif": (tarfile.BLKTYPE, "", "device file"),
               "fifo.cif": (tarfile.FIFOTYPE, "", "FIFO"),
               "dir.cif": (tarfile.DIRTYPE, "", "directory")}
    with tarfile.open(archive, "w") as tar:
        for name, text in regular.items():
            _add(tar, name, text.encode())
        for name, (kind, target, _) in special.items():
            _special(tar, name, kind, target)
        _add(tar, "notes.txt", b"not a CIF: not an input")
    before = _tree(tmp_path)
    monkeypatch.chdir(box / "work")

    docs = list(iter_candidates(archive, "c", spec))

    assert _tree(tmp_path) == before and not Path("/tmp/fw_screen_abs_evil.cif").exists()
    by_member = {d["source"]["member"]: d for d in docs}
    assert len(by_member) == len(docs) == len(regular) + len(special)     # one record each, none dropped
    for name, text in regular.items():
        assert by_member[name]["cif_original"] == text and "ingest_error" not in by_member[name]
        assert validity_fields(by_member[name], spec)["validity"]["valid"] is True
    for name, (_, _, words) in special.items():
        doc = by_member[name]
        assert doc["ingest_error"] == f"tar member is a {words}, not a regular file: not read"
        assert doc["cif_original"] == "" and doc["cif_processed"] is None
        v = validity_fields(doc, spec)["validity"]
        assert v["valid"] is False and v["first_failure"] == "ingest" and v["reason"] == doc["ingest_error"]
    assert "root:" not in repr(docs)          # /etc/passwd was never read


def test_truncated_or_corrupt_archive(tmp_path, ingest):
    """A cut-off archive yields the members before the cut and a record naming the damage; garbage that is
    no archive at all stops the submission with a message."""
    archive = tmp_path / "whole.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i, name in enumerate(["LiCoO2_mp-22526.cif", "Li2O_mp-1960.cif", "NaFePO4_mp-19226.cif"]):
            _add(tar, f"{i}.cif", cif_text(name).encode())
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    raws = list(read_inputs(cut, ingest))
    assert raws and raws[0].error is None and raws[0].text == cif_text("LiCoO2_mp-22526.cif")
    assert raws[-1].error and "unreadable" in raws[-1].error
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    with pytest.raises(IngestError, match="cannot read archive"):
        list(read_inputs(bad, ingest))


# ----------------------------------------------------------------------------------------- tables
def test_parquet_in_crystallm_pi_layout(ingest):
    df = pd.read_parquet(TABLE)
    assert list(df.columns) == ["Material ID", "Prompt", "Generated CIF", "condition_vector"]
    raws = list(read_inputs(TABLE, ingest))
    assert len(raws) == len(df) == 41
    for i, raw in enumerate(raws):
        assert raw.error is None
        assert raw.text == df["Generated CIF"][i]
        assert raw.condition == df["condition_vector"][i]
        assert raw.source == {"file": TABLE.name, "row": i, "material_id": df["Material ID"][i],
                              "prompt": df["Prompt"][i]}


def test_csv_and_alternative_condition_column(tmp_path, ingest):
    df = pd.read_parquet(TABLE).head(6).rename(columns={"condition_vector": "Condition Vector"})
    csv = tmp_path / "gens.csv"
    df.to_csv(csv, index=False)         # multi-line CIFs become quoted CSV fields
    pq = tmp_path / "gens.parquet"
    df.to_parquet(pq, index=False)
    for path in (csv, pq):
        raws = list(read_inputs(path, ingest))
        assert [r.text for r in raws] == list(df["Generated CIF"])
        assert [r.condition for r in raws] == list(df["Condition Vector"])
        assert [r.source["material_id"] for r in raws] == list(df["Material ID"])


def test_table_rows_with_empty_cells(tmp_path, ingest):
    good = cif_text("LiNiO2_mp-865631.cif")
    df = pd.DataFrame({"Material ID": ["g1", None, "g3"], "Generated CIF": [good, good, None],
                       "condition_vector": ["0.05, 0.0", None, "0.9, 0.0"]})
    csv = tmp_path / "holes.csv"
    df.to_csv(csv, index=False)          # empty cells come back as NaN
    pq = tmp_path / "holes.parquet"
    df.to_parquet(pq, index=False)       # empty cells come back as None
    for path in (csv, pq):
        raws = list(read_inputs(path, ingest))
        assert len(raws) == 3
        assert raws[0].source["material_id"] == "g1" and raws[0].condition == "0.05, 0.0"
        # an empty cell is no id and no condition (not the text "nan")
        assert "material_id" not in raws[1].source
        assert raws[1].condition is None and raws[1].error is None and raws[1].text == good
        assert raws[2].error is not None and "no CIF text in column 'Generated CIF'" in raws[2].error
    docs = list(iter_candidates(csv, "t", load_spec(campaign="t")))
    assert docs[1]["targets"] == {} and "targets_problem" not in docs[1]


def test_table_without_cif_column_names_the_columns(tmp_path, ingest):
    csv = tmp_path / "no_cif.csv"
    pd.DataFrame({"Material ID": ["a"], "structure": ["data_x"], "condition_vector": ["0.1, 0.0"]}).to_csv(
        csv, index=False)
    with pytest.raises(IngestError) as err:
        list(read_inputs(csv, ingest))
    message = str(err.value)
    assert "no CIF column" in message
    for column in ("Material ID", "structure", "condition_vector", "Generated CIF"):
        assert column in message
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(IngestError, match="cannot read table"):
        list(read_inputs(broken, ingest))


# ----------------------------------------------------------------------------- condition vectors
@pytest.fixture(scope="module")
def conditions(spec):
    return spec["conditions"]


@pytest.mark.parametrize("norm, ev", sorted(README_BAND_GAP.items()))
def test_condition_table_points(conditions, norm, ev):
    targets, problem = decode_conditions(f"{norm}, 0.0", conditions)
    assert problem is None
    assert targets["band_gap"] == {"normalised": norm, "unit": "eV", "value": ev}
    assert targets["e_above_hull"] == {"normalised": 0.0, "unit": "eV/atom", "value": 0.0}


def test_condition_written_differently_still_matches(conditions):
    for text in ("0.4, 0.0", " 0.40,0.0", "[0.4 0.0]", "0.4;0"):
        targets, problem = decode_conditions(text, conditions)
        assert problem is None and targets["band_gap"]["value"] == 1.547, text


@pytest.mark.parametrize("norm", [0.07, 0.3, 0.45, 0.55, 0.8, 0.899])
def test_condition_between_table_points_is_interpolated_and_flagged(conditions, norm):
    xs = sorted(README_BAND_GAP)
    expected = float(np.interp(norm, xs, [README_BAND_GAP[x] for x in xs]))
    targets, problem = decode_conditions(f"{norm}, 0.0", conditions)
    assert problem is None
    assert targets["band_gap"]["interpolated"] is True
    assert targets["band_gap"]["value"] == pytest.approx(expected, rel=1e-12)
    assert "interpolated" not in targets["e_above_hull"]


@pytest.mark.parametrize("text, bad", [("0.95, 0.0", "band_gap=0.95"), ("0.01, 0.0", "band_gap=0.01"),
                                       ("-0.2, 0.0", "band_gap=-0.2"), ("0.5, 0.3", "e_above_hull=0.3")])
def test_condition_outside_the_table_has_no_value_and_a_reason(conditions, text, bad):
    targets, problem = decode_conditions(text, conditions)
    name = bad.split("=")[0]
    assert targets[name]["value"] is None
    assert bad in problem and "outside the decoding table" in problem


def test_condition_garbage_and_wrong_length(conditions):
    assert decode_conditions(None, conditions) == ({}, None)
    assert decode_conditions("  ", conditions) == ({}, None)
    targets, problem = decode_conditions("high, low", conditions)
    assert targets == {} and "not a list of numbers" in problem
    targets, problem = decode_conditions("0.05", conditions)
    assert targets["band_gap"]["value"] == 0.072
    assert "condition vector has 1 values, spec names 2" in problem


def test_candidates_from_the_table_carry_decoded_targets(spec):
    df = pd.read_parquet(TABLE)
    docs = list(iter_candidates(TABLE, "c1", spec))
    assert len(docs) == len(df)
    for doc, cond in zip(docs, df["condition_vector"]):
        norm = float(cond.split(",")[0])
        assert doc["condition_vector"] == cond
        assert doc["targets"]["band_gap"]["value"] == README_BAND_GAP[round(norm, 2)]
        assert "targets_problem" not in doc


# ------------------------------------------------------------------------------- post-processing
def test_postprocess_raw_generation():
    raw = RAW_NACL.read_text()
    out, repairs = postprocess(raw)
    # tokens and the brackets around the prompt formula
    assert "<bos>" not in out and "<eos>" not in out
    assert "[" not in out and "]" not in out
    assert re.search(r"^data_Na4Cl4$", out, re.M)
    # malformed numbers
    assert re.search(r"^_cell_length_a 5\.692$", out, re.M)
    assert re.search(r"^_cell_angle_alpha 90\.0$", out, re.M)
    assert "  Cl  Cl1  4  0.5  0.5000  0.5000  1" in out
    # atom-properties block gone: the space group follows the data_ line
    assert "_atom_type_" not in out
    assert re.search(r"^data_Na4Cl4\n_symmetry_space_group_name_H-M Fm-3m$", out, re.M)
    # the lone 'x, y, z' became the full operator set of Fm-3m
    ops = re.findall(r"^\s*\d+\s+'([^']+)'\s*$", out, re.M)
    expected = SpaceGroup("Fm-3m").symmetry_ops
    assert len(ops) == len(expected) == 192
    assert len(set(ops)) == 192 and "x, y, z" in ops
    assert repairs == [
        "removed model tokens",
        "removed token brackets",
        "merged a number with two decimal points (x1)",
        "completed a number ending in '.' (x1)",
        "completed a number starting with '.' (x1)",
        "expanded 'x, y, z' into the 192 operators of Fm-3m",
        "removed atom-properties block",
    ]


def test_postprocessed_generation_is_rocksalt_with_eight_sites(spec):
    out, _ = postprocess(RAW_NACL.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = parse_structure(out)
    assert len(structure) == 8
    assert structure.composition.as_dict() == {"Na": 4.0, "Cl": 4.0}
    assert structure.lattice.abc == pytest.approx((5.692, 5.692, 5.692))
    reference = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.692), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert StructureMatcher().fit(structure, reference)
    # each atom has six of the other kind at a/2
    for site in structure:
        neighbours = structure.get_neighbors(site, 3.0)
        assert len(neighbours) == 6 and {n.specie for n in neighbours} != {site.specie}
        assert [n.nn_distance for n in neighbours] == pytest.approx([5.692 / 2] * 6)
    # and the whole repaired generation passes CrystaLLM's validity checks
    assert check_cif(out, spec["validity"]).valid


def test_without_expansion_the_raw_cif_has_only_the_asymmetric_unit():
    """What the operator expansion is for: the generated 'x, y, z' alone gives 2 atoms, not 8."""
    raw = RAW_NACL.read_text()
    out, _ = postprocess(raw)
    loop = out[out.index("loop_\n _symmetry_equiv_pos_site_id"):out.index("loop_\n _atom_site_type_symbol")]
    unexpanded = out.replace(loop, "loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n  1  'x, y, z'\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(parse_structure(unexpanded)) == 2


@pytest.mark.parametrize("before, after, repair", [
    ("_cell_length_a 3.6.69\n", "_cell_length_a 3.669\n", "merged a number with two decimal points (x1)"),
    ("  Na  Na0  4  1.  0.5  0.5  1\n", "  Na  Na0  4  1.0  0.5  0.5  1\n", "completed a number ending in '.' (x1)"),
    ("  Na  Na0  4  .12  .5  0.5  1\n", "  Na  Na0  4  0.12  0.5  0.5  1\n",
     "completed a number starting with '.' (x2)"),
    ("data_[Na2Cl2]\n", "data_Na2Cl2\n", "removed token brackets"),
])
def test_postprocess_number_and_bracket_repairs(before, after, repair):
    assert postprocess(before) == (after, [repair])


def test_postprocess_leaves_symmetric_and_p1_cifs_alone():
    # P1 with only the identity is complete as written
    p1 = ("data_Na1Cl1\n_symmetry_space_group_name_H-M P1\nloop_\n _symmetry_equiv_pos_site_id\n"
          " _symmetry_equiv_pos_as_xyz\n  1  'x, y, z'\n")
    assert postprocess(p1) == (p1, [])
    # a CIF that already lists every operator (CifWriter, and every post-processed generation)
    for name in ("Li2O_mp-1960.cif", "LiCoO2_mp-22526.cif", "NaFePO4_mp-19226.cif"):
        text = cif_text(name)
        assert postprocess(text) == (text, [])
    for raw in read_inputs(TABLE, load_spec()["ingest"]):
        assert postprocess(raw.text) == (raw.text, [])


def test_postprocess_unknown_space_group_is_reported_not_raised():
    raw = RAW_NACL.read_text().replace("Fm-3m", "Qq-9z")
    out, repairs = postprocess(raw)
    assert any(r.startswith("could not expand symmetry operators for 'Qq-9z'") for r in repairs)
    assert "1  'x, y, z'" in out


# ---------------------------------------------------------------------------------------- records
def test_candidate_documents_and_their_ids(tmp_path, spec):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "raw.cif").write_text(RAW_NACL.read_text())
    (folder / "same_text.cif").write_text(RAW_NACL.read_text())
    (folder / "bin.cif").write_bytes(b"\x00\x01data_")
    docs = {d["source"]["file"]: d for d in iter_candidates(folder, "camp", spec)}
    raw_doc = docs["raw.cif"]
    assert raw_doc["campaign"] == "camp" and raw_doc["status"] == "ingested"
    assert raw_doc["cif_original"] == RAW_NACL.read_text()
    assert raw_doc["cif_processed"] == postprocess(RAW_NACL.read_text())[0]
    assert raw_doc["repaired"] is True and len(raw_doc["repairs"]) == 7
    assert raw_doc["_id"].startswith("camp:")
    # same text in another file is another candidate; same file read again is the same candidate
    assert docs["same_text.cif"]["_id"] != raw_doc["_id"]
    assert docs["same_text.cif"]["content_hash"] == raw_doc["content_hash"]
    again = {d["source"]["file"]: d["_id"] for d in iter_candidates(folder, "camp", spec)}
    assert again == {k: d["_id"] for k, d in docs.items()}
    assert candidate_id("other", raw_doc["source"], raw_doc["cif_original"]) != raw_doc["_id"]
    # unreadable input: recorded with its reason, nothing to process
    assert docs["bin.cif"]["ingest_error"] == "binary content (NUL bytes), not CIF text"
    assert docs["bin.cif"]["cif_processed"] is None


def test_postprocess_switched_off(spec):
    off = load_spec(campaign="raw", ingest={"postprocess": False})
    raw = next(read_inputs(RAW_NACL, off["ingest"]))
    doc = candidate_document(raw, "raw", off)
    assert doc["cif_processed"] == doc["cif_original"] == RAW_NACL.read_text()
    assert doc["repairs"] == [] and doc["repaired"] is False


def test_latin1_file_is_read(tmp_path, ingest):
    path = tmp_path / "latin.cif"
    text = cif_text("LiNiO2_mp-865631.cif").replace("# generated using pymatgen", "# Å by Jürgen")
    path.write_bytes(text.encode("latin-1"))
    (raw,) = read_inputs(path, ingest)
    assert raw.text == text and raw.source["encoding"] == "latin-1"
