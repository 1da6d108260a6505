"""Installs that fit each node (issue 17, part 4): the base package runs the cheap funnel, FireWorks and the
analysis without torch; ``[ml]``, ``[dft]``, ``[vasp]``, ``[report]`` and ``[all]`` add the rest; a FireTask
whose extra is missing fizzles with the pip command; every import of ``fw_screen/`` is declared.

The "base install" here is the repository's own venv with the extras' modules hidden from every Python process
(a ``sitecustomize.py`` on ``PYTHONPATH``, inherited by the rlaunch workers): torch, matgl, chgnet, sevenn,
dgl, custodian, atomate, matminer and scikit-learn cannot be imported at all (a base install does not have
them); ase and matplotlib, which the base install does have (smact and pymatgen depend on them), cannot be
imported by fw-screen's own code.  The slow test makes a real base venv with ``pip install`` instead.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from fw_screen import extras

from tests.conftest import DATA, EXAMPLES, fworker_file, generations_table

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "fw_screen"
BIN = Path(sys.executable).parent

#: not in a base install: nothing may import them
ABSENT = ("torch", "matgl", "chgnet", "sevenn", "dgl", "custodian", "atomate", "matminer", "sklearn")
#: in a base install only because base dependencies need them (smact -> ase, pymatgen -> matplotlib): fw-screen's
#: own code may import them only where an extra is needed
NOT_OURS = ("ase", "matplotlib")

#: fw_screen modules that are part of an extra's code path: they may import that extra's modules at top level
#: (and nothing of the base install imports them at top level)
EXTRA_MODULES = {
    "fw_screen.science.potentials": "ml",
    "fw_screen.dft.qe.jobs": "dft",
}
#: imported modules that are not installed in the test venv, and the distribution that provides them
NOT_INSTALLED = {"mp_api": "mp-api"}

SITECUSTOMIZE = f'''
"""Hide the modules of fw-screen's extras, as a base install (tests/test_extras.py)."""
import builtins
import importlib.abc
import sys

ABSENT = {set(ABSENT)!r}
NOT_OURS = {set(NOT_OURS)!r}


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden: not in the base install)", name=name)
        return None


sys.meta_path.insert(0, _Absent())
_import = builtins.__import__


def _guarded(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.partition(".")[0] in NOT_OURS and \\
            str((globals or {{}}).get("__name__", "")).startswith("fw_screen"):
        raise ModuleNotFoundError(f"No module named {{name!r}} (hidden from fw_screen: an extra's module)",
                                  name=name)
    return _import(name, globals, locals, fromlist, level)


builtins.__import__ = _guarded
'''


# --------------------------------------------------------------------------------------------- helpers
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def requirement_name(req: str) -> str:
    return norm(re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0])


def declared() -> dict[str, set[str]]:
    """group ('base', 'ml', ...) -> normalized distribution names; ``fw-screen[...]`` expanded."""
    cfg = pyproject()["project"]
    groups = {"base": {requirement_name(r) for r in cfg["dependencies"]}}
    opt = cfg["optional-dependencies"]
    for name, reqs in opt.items():
        groups[name] = {requirement_name(r) for r in reqs}
    for name, reqs in opt.items():
        for r in reqs:
            if requirement_name(r) == "fw-screen":
                for sub in re.search(r"\[(.*)\]", r).group(1).split(","):
                    groups[name] |= groups[sub.strip()]
                groups[name].discard("fw-screen")
    return groups


def fw_modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        out[".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = p
    return out


def _walk_module_level(nodes):
    """The statements run when a module is imported: its body, into if/try/with/class, not into functions."""
    for n in nodes:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield n
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _walk_module_level(getattr(n, field, []) or [])


def imported(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file (function-level ones too, unless
    ``top_level_only``); relative imports resolved are not used in fw_screen."""
    tree = ast.parse(path.read_text())
    nodes = _walk_module_level(tree.body) if top_level_only else ast.walk(tree)
    out = []
    for n in nodes:
        if isinstance(n, ast.Import):
            out += [(a.name, n.lineno) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            out.append((n.module, n.lineno))
            out += [(f"{n.module}.{a.name}", n.lineno) for a in n.names]  # `from pkg import module`
    return out


def third_party(module: str) -> str | None:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("fw_screen", "__future__"):
        return None
    return top


def blocked_env(tmp_path: Path, **extra) -> dict:
    folder = tmp_path / "base-install"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FW_SCREEN_LAUNCHPAD")}
    return {**env, "PYTHONPATH": str(folder), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", **extra}


def run(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ extras.py
def test_require_names_the_extra_and_the_pip_command(monkeypatch):
    extras.require("ml", "json", "os")  # present: returns quietly
    with pytest.raises(extras.MissingExtraError) as exc:
        extras.require("ml", "no_such_module_fws", what="the ML stage")
    msg = str(exc.value)
    assert msg == ("the ML stage needs fw-screen's [ml] extra (no_such_module_fws not installed): "
                   "pip install 'fw-screen[ml]'")
    assert isinstance(exc.value, ImportError) and exc.value.name == "no_such_module_fws"
    with pytest.raises(ValueError, match="unknown extra"):
        extras.require("gpu")
    # the modules checked per extra are the ones its distributions provide
    dists = packages_distributions()
    groups = declared()
    for extra, (_, modules) in extras.EXTRAS.items():
        for m in modules:
            assert {norm(d) for d in dists.get(m, [])} & groups[extra], (extra, m)


# --------------------------------------------------------------------------------- declared imports
def test_every_import_maps_to_a_declared_distribution_and_extras_stay_out_of_base_modules():
    """Every third-party module imported anywhere in fw_screen/ (function-level imports included) belongs to a
    distribution declared in the base dependencies or an extra; a module only an extra declares is imported at
    module level only by the fw_screen modules of that extra (EXTRA_MODULES), and no other module imports those
    at module level, directly or through others."""
    dists = packages_distributions()
    groups = declared()
    base = groups["base"]
    every = set().union(*groups.values())
    mods = fw_modules()
    undeclared, owner = [], {}
    for name, path in mods.items():
        for mod, line in imported(path):
            top = third_party(mod)
            if top is None or top in owner:
                continue
            provided = {norm(d) for d in dists.get(top, [])}
            if not provided:
                assert top in NOT_INSTALLED, f"{top} ({path.relative_to(ROOT)}:{line}) is not installed"
                provided = {NOT_INSTALLED[top]}
            hits = provided & every
            if not hits:
                undeclared.append(f"{top} ({path.relative_to(ROOT)}:{line}) from {sorted(provided)}")
                continue
            owner[top] = "base" if provided & base else sorted(g for g in groups if provided & groups[g])
    assert not undeclared, undeclared
    extra_only = {m: g for m, g in owner.items() if g != "base"}
    assert set(ABSENT) - {"dgl"} <= set(extra_only), extra_only  # dgl: through matgl only, never imported
    assert set(NOT_OURS) <= set(extra_only)

    bad = []
    for name, path in mods.items():
        for mod, line in imported(path, top_level_only=True):
            top = third_party(mod)
            if top in extra_only and EXTRA_MODULES.get(name) not in extra_only[top]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} ([{'/'.join(extra_only[top])}]) "
                           f"at module level")
    assert not bad, "\n".join(bad)

    # module-level fw_screen imports, transitively: no base module reaches an extra's module
    edges = {name: {m for m, _ in imported(path, top_level_only=True) if m in mods and m != name}
             for name, path in mods.items()}
    for name in mods:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = name.split(".")
        edges[name] |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in mods}
    reach_bad = []
    for start in mods:
        if start in EXTRA_MODULES:
            continue
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for t in edges.get(m, ()):
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        reach_bad += [f"{start} -> {t}" for t in seen & set(EXTRA_MODULES)]
    assert not reach_bad, reach_bad


def test_every_base_module_imports_without_the_extras(tmp_path):
    """Each fw_screen module outside EXTRA_MODULES imports in the base install; require() reports the extras'
    modules missing there."""
    names = sorted(m for m in fw_modules() if m not in EXTRA_MODULES)
    code = textwrap.dedent(f"""
        import importlib, json, sys
        failed = {{}}
        for name in {names!r}:
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed[name] = repr(exc)
        hidden = {{}}  # the hiding works: torch for anyone, matplotlib for fw_screen's code
        for stmt, where in (("import torch", "anyone"), ("import matplotlib.figure", "fw_screen.x")):
            try:
                exec(stmt, {{"__name__": where}})
            except ModuleNotFoundError:
                hidden[stmt] = True
        from fw_screen import extras
        print(json.dumps({{"failed": failed, "hidden": hidden,
                          "missing": {{e: extras.missing(e) for e in extras.EXTRAS}}}}))
    """)
    out = run([sys.executable, "-c", code], blocked_env(tmp_path), tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["failed"] == {} and res["hidden"] == {"import torch": True, "import matplotlib.figure": True}
    assert res["missing"]["ml"] == ["torch", "chgnet", "sevenn", "matgl"]  # ase is there (smact needs it)
    assert res["missing"]["dft"] == ["custodian"] and res["missing"]["vasp"] == ["atomate", "custodian"]
    assert res["missing"]["report"] == ["matminer", "sklearn"]  # matplotlib is there (pymatgen needs it)


# ------------------------------------------------------------------------ the base install, for real
def test_base_install_runs_cheap_funnel_and_analysis_and_ml_fizzles_with_pip_command(
        db_server, launchpad, launchpad_file, store, tmp_path):
    """In the base install: references, submit, the cheap funnel on rlaunch workers (FireWorks, the embedded
    server), `fw-screen db status`, status/table/yields/metrics all succeed; `fw-screen report` exits 2 with the
    pip command; an ML worker's Fireworks fizzle with the pip command in their launch's _exception and no
    candidate document changes."""
    from fw_screen import state as st

    env = blocked_env(tmp_path)
    fws = str(BIN / "fw-screen")
    lp = str(launchpad_file)
    home = tmp_path / "home"
    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text(yaml.safe_dump({"campaign": "base", "batch_size": 8, "dedup_shards": 2}))
    import pandas as pd

    gens = tmp_path / "inputs.parquet"  # the 4 ML fixture rows (novel against the two MP systems) + 12 more
    pd.concat([pd.read_parquet(DATA / "crystallm_pi_ml_rows.parquet"),
               pd.read_parquet(generations_table(tmp_path, 10, seed=11, repeats=2))],
              ignore_index=True).to_parquet(gens)
    t0 = time.perf_counter()

    steps = {}

    def ok(*args, timeout=600):
        t = time.perf_counter()
        out = run([fws, "--home", str(home), *args], env, tmp_path, timeout=timeout)
        steps[args[0]] = steps.get(args[0], 0) + time.perf_counter() - t
        assert out.returncode == 0, f"fw-screen {' '.join(args)}:\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}"
        return out.stdout

    status = run([fws, "--home", str(db_server["home"]), "db", "status", "--json"], env, tmp_path, timeout=120)
    assert status.returncode == 0 and json.loads(status.stdout)["answering"], status.stderr[-2000:]
    ok("references", str(EXAMPLES / "mp_Li-Co-Ni-O.json.gz"), str(EXAMPLES / "mp_Na-Fe-P-O.json.gz"), "-l", lp)
    ok("submit", str(gens), "--spec", str(spec_yaml), "-l", lp)
    ok("run", "-n", "1", "-w", fworker_file(tmp_path, launchpad_file, ["cheap"]), "-l", lp)

    cheap = list(launchpad.fireworks.find({"spec.stage": {"$in": ["ingest", "validity", "uniqueness"]}},
                                          {"state": 1, "fw_id": 1}))
    errors = [((ln.get("action") or {}).get("stored_data") or {}).get("_exception", {}).get("_stacktrace", "")[-800:]
              for ln in launchpad.launches.find({"fw_id": {"$in": [f["fw_id"] for f in cheap]}, "state": "FIZZLED"})]
    assert cheap and {fw["state"] for fw in cheap} == {"COMPLETED"}, errors[:2]
    assert store.candidates.count_documents({"campaign": "base"}) == 16
    assert store.candidates.count_documents({"campaign": "base", "status": {"$in": [st.INGESTED]}}) == 0
    n_novel = store.candidates.count_documents({"campaign": "base", "status": st.NOVEL})
    assert n_novel >= 4

    text = ok("status", "-c", "base", "-l", lp)
    assert "inputs" in text and " 16" in text
    table = ok("table", "base", "-l", lp, "--stage", "novel")
    assert len(table.strip().splitlines()) == 1 + n_novel  # CSV header + one row per novel candidate
    assert "V" in ok("yields", "base", "-l", lp)
    metrics = json.loads(ok("metrics", "base", "-l", lp, "--json"))
    assert metrics
    report = run([fws, "--home", str(home), "report", "base", "-l", lp], env, tmp_path, timeout=300)
    assert report.returncode == 2 and "pip install 'fw-screen[report]'" in report.stderr, report.stderr[-2000:]

    # an ML worker without [ml]: its Fireworks fizzle, naming the extra, before touching the store
    before = sorted(store.candidates.find({"campaign": "base"}), key=lambda d: d["_id"])
    ml_fws = list(launchpad.fireworks.find({"spec.stage": "stability"}, {"fw_id": 1}))
    assert ml_fws
    fizzled = run([fws, "--home", str(home), "run", "-n", "1", "-w",
                   fworker_file(tmp_path, launchpad_file, ["ml"]), "-l", lp], env, tmp_path)
    assert sorted(store.candidates.find({"campaign": "base"}), key=lambda d: d["_id"]) == before
    states = {fw["state"] for fw in launchpad.fireworks.find({"spec.stage": "stability"}, {"state": 1})}
    assert states == {"FIZZLED"}, (states, fizzled.stdout[-2000:])
    for fw in ml_fws:
        launch = launchpad.launches.find_one({"fw_id": fw["fw_id"]})
        exc = launch["action"]["stored_data"]["_exception"]
        assert "MissingExtraError" in exc["_stacktrace"]
        assert "needs fw-screen's [ml] extra" in exc["_stacktrace"] and "pip install 'fw-screen[ml]'" in \
            exc["_stacktrace"].strip().splitlines()[-1]
    print(f"base-install funnel + analysis + fizzled ML: {time.perf_counter() - t0:.1f} s",
          {k: round(v, 1) for k, v in steps.items()})


# --------------------------------------------------------------------------------------- packaging
def test_packaging_metadata_builds_without_warnings(tmp_path):
    """`pip wheel --no-deps` of the project: no (deprecation) warning from setuptools; SPDX licence; the
    extras and their requirements in the metadata."""
    out = run([str(BIN / "pip"), "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"),
               str(ROOT)], dict(os.environ), tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert not re.search(r"warn|deprecat", text, re.I), text[-4000:]
    import zipfile

    (wheel,) = (tmp_path / "whl").glob("fw_screen-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: BSD-3-Clause" in meta
    assert {m for m in re.findall(r"^Provides-Extra: (\S+)$", meta, re.M)} >= {"ml", "dft", "vasp", "report", "all"}
    requires = re.findall(r"^Requires-Dist: (.+)$", meta, re.M)
    base = [r for r in requires if "extra ==" not in r]
    assert not any(requirement_name(r) in {"torch", "matgl", "chgnet", "sevenn", "custodian", "atomate",
                                             "matminer", "scikit-learn", "matplotlib"} for r in base), base


@pytest.mark.slow
def test_real_base_venv_runs_cheap_funnel_and_table(db_server, launchpad, launchpad_file, store, tmp_path):
    """A fresh venv, `pip install <repo>` without extras (PyPI through the machine's mirror): no torch; the
    cheap funnel through FireWorks and `fw-screen table` run there."""
    venv = tmp_path / "venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = run([str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)], dict(os.environ), tmp_path,
              timeout=3000)
    assert pip.returncode == 0, pip.stderr[-3000:]
    installed = time.perf_counter() - t0
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FW_SCREEN_LAUNCHPAD")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    absent = run([py, "-c", "import importlib.util as u; print([m for m in " + repr(list(ABSENT)) +
                  " if u.find_spec(m)])"], env, tmp_path)
    assert absent.returncode == 0 and absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    fws = str(venv / "bin" / "fw-screen")
    lp = str(launchpad_file)
    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text(yaml.safe_dump({"campaign": "venv", "batch_size": 8, "dedup_shards": 2}))
    for args in (["references", str(EXAMPLES / "mp_Li-Co-Ni-O.json.gz"), "-l", lp],
                 ["submit", str(DATA / "crystallm_pi_ml_rows.parquet"), "--spec", str(spec_yaml), "-l", lp],
                 ["run", "-n", "1", "-w", fworker_file(tmp_path, launchpad_file, ["cheap"]), "-l", lp]):
        out = run([fws, "--home", str(tmp_path / "home"), *args], env, tmp_path, timeout=900)
        assert out.returncode == 0, f"{args}: {out.stderr[-3000:]}"
    table = run([fws, "table", "venv", "-l", lp], env, tmp_path)
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 1 + 4, table.stderr[-2000:]
    cheap = {fw["state"] for fw in launchpad.fireworks.find({"spec.stage": {"$ne": "stability"}}, {"state": 1})}
    assert cheap == {"COMPLETED"}
    print(f"base venv: install {installed:.0f} s, funnel + table {time.perf_counter() - t0 - installed:.0f} s")
