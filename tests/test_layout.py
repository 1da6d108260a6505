"""The layout's rules, enforced: which room a module lives in decides what it may import.

::

    fw_screen/
      spec.py state.py   the campaign spec and the candidate state machine        (import nothing of fw_screen)
      extras.py          which optional extra ([ml], [dft], ...) a task needs      (imports nothing of fw_screen)
      science/           pure: structures and dicts in, verdicts out              (spec, state, science)
      dft/               DFT result schema, hull, Quantum ESPRESSO, VASP results  (+ science, dft)
      store/             MongoDB: every access of fw-screen's own collections     (+ science)
      server/            the embedded database server and the files it writes     (+ store)
      stages/            one runner per funnel stage                               (+ dft, store)
      reporting/         tables, yields, metrics, chemical space, the HTML report  (+ dft, store)
      orchestration/     FireTasks + workflow builders, recovery, supervisor, LaunchPad queries (+ stages, server)
      cli.py             parses arguments and prints                               (anything)

No import circles, no private name imported from another module, pymatgen's public API only.  The graph is
read from the source (``ast``), so these tests import nothing of the package.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "fw_screen"

#: room -> the rooms it may import (besides itself); a room is a top-level module or folder of fw_screen
ALLOWED = {
    "spec": set(), "state": set(), "extras": set(),
    "science": {"spec", "state"},
    "dft": {"spec", "state", "science"},
    "store": {"spec", "state", "science"},
    "server": {"spec", "state", "science", "store"},
    "stages": {"spec", "state", "science", "dft", "store"},
    "reporting": {"spec", "state", "science", "dft", "store"},
    "orchestration": {"spec", "state", "extras", "science", "dft", "store", "stages", "server"},
    "cli": {"spec", "state", "extras", "science", "dft", "store", "stages", "server", "reporting", "orchestration"},
    "__init__": set(),
}
#: third-party packages a room may not import: science and dft are pure; stages reach MongoDB through the store
FORBIDDEN = {
    "science": {"pymongo", "bson", "fireworks", "custodian", "atomate"},
    "dft": {"pymongo", "bson", "fireworks", "atomate"},
    "stages": {"fireworks", "pymongo"},
    "reporting": {"fireworks"},
}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path):
    """(module imported, name or None, line) for every import of a file, function-level ones included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                yield node.module, a.name, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for mod, name, _ in imports(p):
            if not mod.startswith("fw_screen"):
                continue
            target = f"{mod}.{name}" if name and f"{mod}.{name}" in mods else mod
            if target != m and not m.startswith(target + "."):  # a package's own __init__ is no edge
                edges[m].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert circles(graph()) == []


def test_each_room_imports_only_the_rooms_below_it():
    bad = []
    for m, targets in graph().items():
        r = room(m)
        assert r in ALLOWED, f"{m}: a module outside the rooms the layout names ({sorted(ALLOWED)})"
        for t in targets:
            if room(t) != r and room(t) not in ALLOWED[r]:
                bad.append(f"{m} imports {t}")
    assert not bad, "\n".join(bad)


def test_science_and_dft_are_pure_and_stages_leave_mongodb_to_the_store():
    bad = []
    for m, p in modules().items():
        for mod, _, line in imports(p):
            if mod.split(".")[0] in FORBIDDEN.get(room(m), ()):
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module_and_pymatgen_public_only():
    bad = []
    for m, p in modules().items():
        for mod, name, line in imports(p):
            if name and name.startswith("_") and not name.startswith("__") and mod != m:
                if mod.startswith(("fw_screen", "pymatgen")):
                    bad.append(f"{p.relative_to(ROOT)}:{line} from {mod} import {name}")
        text = p.read_text()
        for match in re.finditer(r"\b(StructureMatcher|SpacegroupAnalyzer|PhaseDiagram|Structure|Composition)\._[a-z]\w*",
                                 text):
            bad.append(f"{p.relative_to(ROOT)}: {match.group(0)}")
    assert not bad, "\n".join(bad)


def test_mongodb_access_lives_in_the_store():
    """Collections are reached through ResultsStore: ``store.candidates.find`` outside store/ is a leak."""
    pat = re.compile(r"\bstore\.(candidates|campaigns|references|dft_references|db)\.\w+\(")
    bad = [f"{p.relative_to(ROOT)}: {mm.group(0)}" for m, p in modules().items()
           if room(m) not in ("store",) for mm in pat.finditer(p.read_text())]
    assert not bad, "\n".join(bad)


def test_the_campaign_spec_is_read_as_typed_attributes():
    """``spec.ml.stability_threshold``, never ``spec["ml"]["stability_threshold"]`` (fw_screen/spec.py types
    every field; a string key would escape that).  Pure functions that take one section may read it as a
    mapping (a test can hand them a dict), so only reads of the whole campaign spec are looked for."""
    pat = re.compile(r"(?<![\w.])(spec|self\.spec|ctx\.spec)(\[[\"']|\.get\()|campaign_spec\([^()]*\)\[")
    bad = [f"{p.relative_to(ROOT)}:{text[:mm.start()].count(chr(10)) + 1}: {mm.group(0)}"
           for m, p in modules().items() if m != "fw_screen.spec"
           for text in [p.read_text()] for mm in pat.finditer(text)]
    assert not bad, "\n".join(bad)


def test_pyproject_lists_every_package_folder():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py")}
    assert folders <= listed, f"folders missing from pyproject.toml: {sorted(folders - listed)}"
    assert cfg["tool"]["setuptools"]["package-dir"]["fw_screen.examples"] == "examples"


#: import name -> distribution name, where they differ
DISTRIBUTIONS = {"sklearn": "scikit-learn", "yaml": "pyyaml", "bson": "pymongo", "monty": "pymatgen",
                 "secantus": "secantusdb", "mp_api": "mp-api", "matminer": "matminer", "pyarrow": "pyarrow"}
#: pulled in by a declared dependency and used only through it (monty comes with pymatgen)
INDIRECT = {"monty", "numpy", "scipy", "ruamel", "dgl", "pytest"}


def test_every_third_party_import_is_a_declared_dependency():
    """Bug 4 of issue 15: chemical_space imported scikit-learn, which pyproject.toml did not declare."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = [d for group in cfg["project"]["optional-dependencies"].values() for d in group]  # mp-api: `[mp]`
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in cfg["project"]["dependencies"] + extras}
    stdlib = set(sys.stdlib_module_names)
    missing = set()
    for m, p in modules().items():
        for mod, _, line in imports(p):
            top = mod.split(".")[0]
            if top in stdlib or top == "fw_screen" or top in INDIRECT or top == "__future__":
                continue
            if DISTRIBUTIONS.get(top, top).lower().replace("_", "-") not in {d.replace("_", "-") for d in declared}:
                missing.add(f"{top} ({p.relative_to(ROOT)}:{line})")
    assert not missing, sorted(missing)


def test_every_stage_the_launchpad_queries_ask_for_is_one_a_builder_writes():
    """Bug 3 of issue 15: a check of Fireworks of stage ``dft_vasp``, a stage no builder writes, was dead."""
    written, asked = set(), {}
    for m, p in modules().items():
        if room(m) != "orchestration":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value == "stage" and isinstance(v, ast.Constant):
                        written.add(v.value)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("stage_keys_with_fireworks",
                                                                                "busy_fireworks"):
                arg = node.args[2] if len(node.args) > 2 else None
                values = [arg] if isinstance(arg, ast.Constant) else list(getattr(arg, "elts", []))
                for v in values:
                    if isinstance(v, ast.Constant):
                        asked[v.value] = f"{p.relative_to(ROOT)}:{node.lineno}"
    assert written >= {"ingest", "validity", "uniqueness", "stability", "dft", "dft_reference", "dft_lite"}
    dead = {s: where for s, where in asked.items() if s not in written}
    assert asked and not dead, dead


def test_reduce_structure_equals_structure_matchers_own_reduction():
    """uniqueness.reduce_structure uses public Structure methods; StructureMatcher's private helper (called
    here only to prove it) gives bit-identical cells on 150 of the demo's generated CIFs."""
    pd = pytest.importorskip("pandas")
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from fw_screen.science.uniqueness import reduce_structure

    df = pd.read_parquet(ROOT / "examples" / "crystallm_pi_generated_8k.parquet")
    column = next(c for c in df.columns if "cif" in c.lower())
    compared = 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif in df[column][:160]:
            try:
                s = Structure.from_str(cif, fmt="cif")
            except Exception:
                continue
            a, b = reduce_structure(s), StructureMatcher._get_reduced_structure(s, primitive_cell=True, niggli=True)
            assert a.lattice.matrix.tolist() == b.lattice.matrix.tolist()
            assert [(str(x.species), x.frac_coords.tolist()) for x in a] == [(str(x.species), x.frac_coords.tolist())
                                                                           for x in b]
            compared += 1
    assert compared >= 150


def test_the_wheel_ships_the_demo_inputs_and_the_demo_finds_them_installed(tmp_path):
    """Bug 4 of issue 15: ``fw-screen demo`` looked for examples/ beside the package, so it ran only from a
    source checkout.  The wheel carries examples/ as fw_screen.examples; installed into a folder outside the
    checkout, the demo's input resolver points into that folder."""
    import shutil

    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", ".fw-screen", "tests", "benchmarks",
                                                             "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("fw_screen-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("fw_screen/examples/crystallm_pi_generated_8k.parquet", "fw_screen/examples/mp_Na-Fe-P-O.json.gz",
              "fw_screen/examples/pseudo/na_pbe_v1.5.uspp.F.UPF", "fw_screen/dft/qe/chain.py",
              "fw_screen/models/band_gap_errors.json", "fw_screen/default_spec.yaml"):
        assert f in names, f
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    out = subprocess.run([sys.executable, "-c", "from fw_screen.cli import examples_dir; print(examples_dir())"],
                         cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == target / "fw_screen" / "examples"


def test_fireworks_stored_under_the_old_task_names_still_load(monkeypatch):
    """A LaunchPad filled by fw-screen before the move names its tasks ``{{fw_screen.firetasks.X}}``; with
    LEGACY_TASK_NAMES as FireWorks' FW_NAME_UPDATES they deserialize into today's classes."""
    from fireworks import fw_config
    from fireworks.utilities.fw_serializers import load_object

    from fw_screen.orchestration import fireworks as fw

    for old, new in fw.LEGACY_TASK_NAMES.items():
        name = new.strip("{}").rsplit(".", 1)[1]
        assert getattr(fw, name)._fw_name == new
    monkeypatch.setattr(fw_config, "FW_NAME_UPDATES", dict(fw.LEGACY_TASK_NAMES))
    import fireworks.utilities.fw_serializers as ser

    monkeypatch.setattr(ser, "FW_NAME_UPDATES", fw_config.FW_NAME_UPDATES)
    task = load_object({"_fw_name": "{{fw_screen.firetasks.ValidityTask}}", "campaign": "c", "batch": "b"})
    assert type(task) is fw.ValidityTask and task["batch"] == "b"
