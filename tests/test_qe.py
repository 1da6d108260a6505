"""Quantum ESPRESSO engine (fw_screen.dft.qe) and its custodian job/handlers (fw_screen.dft.qe.jobs).

Unit tests read real pw.x 6.7 outputs stored in tests/data/qe; the chain tests run the real pw.x (skipped,
with the reason, when pw.x is not on PATH) with the SSSP pseudopotentials copied to tests/data/pseudo.
pw.x runs serially unless $FW_SCREEN_TEST_MPI_CMD is set (on a loaded 2-core machine one rank is faster
than two for these 1-2 atom cells).  k-point densities are lowered from the spec defaults to keep the
default run short; the physics checks hold at these densities.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from fw_screen.dft import qe
from fw_screen.dft.qe import io
from fw_screen.dft.qe import jobs as qe_jobs
from fw_screen.dft.hull import molecule_in_box

DATA = Path(__file__).parent / "data"
PSEUDO = DATA / "pseudo"
QE_OUT = DATA / "qe"
PW = shutil.which("pw.x")
needs_pw = pytest.mark.skipif(PW is None, reason="pw.x (Quantum ESPRESSO) is not on PATH")
MPI_CMD = os.environ.get("FW_SCREEN_TEST_MPI_CMD", "")


def read_out(name: str) -> str:
    path = QE_OUT / name
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as fh:
            return fh.read()
    return path.read_text()


def si_prim(a: float = 5.43) -> Structure:
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), ["Si", "Si"],
                     [[0, 0, 0], [0.25, 0.25, 0.25]])


def al_prim(a: float = 4.04) -> Structure:
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), ["Al"], [[0, 0, 0]])


def settings(**over) -> dict:
    spec = {"pseudo_dir": str(PSEUDO), "pw_cmd": "pw.x", "mpi_cmd": MPI_CMD, "kppa": 500, "nscf_kppa": 700}
    spec.update(over)
    return qe.resolve_settings(spec)


# ------------------------------------------------------------------------------------ settings/pseudos
def test_resolve_settings_precedence(monkeypatch):
    for var in qe.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    s = qe.resolve_settings({})
    assert (s["pw_cmd"], s["mpi_cmd"], s["pseudo_dir"]) == ("pw.x", "", "/usr/share/espresso/pseudo")
    assert s["kppa"] == 1000 and s["default_ecutwfc"] == 45 and s["max_errors"] == 5
    monkeypatch.setenv("FW_SCREEN_PW_CMD", "/opt/qe/pw.x")
    monkeypatch.setenv("ESPRESSO_PSEUDO", "/env/pseudo")
    s = qe.resolve_settings({"kppa": None, "nscf_kppa": 4000}, env={"pseudo_dir": "/fworker/pseudo",
                                                                     "mpi_cmd": "srun"})
    assert s["pw_cmd"] == "/opt/qe/pw.x"  # env var (no spec, no FWorker env)
    assert s["pseudo_dir"] == "/fworker/pseudo"  # FWorker env beats $ESPRESSO_PSEUDO
    assert s["mpi_cmd"] == "srun"
    assert s["kppa"] == 1000 and s["nscf_kppa"] == 4000  # null -> default; value kept
    s = qe.resolve_settings({"pseudo_dir": "/spec/pseudo", "mpi_cmd": ""}, env={"pseudo_dir": "/fworker/pseudo",
                                                                                 "mpi_cmd": "srun"})
    assert s["pseudo_dir"] == "/spec/pseudo" and s["mpi_cmd"] == ""  # the spec wins, "" (serial) included


def test_find_pseudos_from_sssp_table():
    found = qe.find_pseudos(["O", "Li", "Si"], PSEUDO)
    table = json.loads((PSEUDO / "sssp_efficiency_1.3_subset.json").read_text())["elements"]
    for el in ("O", "Li", "Si"):
        assert found[el]["filename"] == table[el]["filename"]
        assert found[el]["md5"] == table[el]["md5"]
        assert found[el]["ecutwfc"] == table[el]["cutoff_wfc_ry"]
        assert found[el]["ecutrho"] == table[el]["cutoff_rho_ry"]
        assert found[el]["source"] == "sssp_efficiency_1.3_subset.json"


def test_find_pseudos_by_filename_and_missing(tmp_path):
    for name in ("Si.pbe-rrkj.UPF", "Li.pbesol-s-kjpaw_psl.0.2.1.UPF", "na_pbe_v1.5.uspp.F.UPF", "Fe.pz-nd-rrkjus.UPF"):
        (tmp_path / name).write_text("<UPF/>")
    found = qe.find_pseudos(["Si", "Na"], tmp_path)
    assert found["Si"]["filename"] == "Si.pbe-rrkj.UPF" and found["Na"]["filename"] == "na_pbe_v1.5.uspp.F.UPF"
    assert found["Si"]["ecutwfc"] is None and found["Si"]["source"] == "filename"
    with pytest.raises(qe.PseudoError) as err:  # pbesol and LDA files are not PBE
        qe.find_pseudos(["Si", "Li", "Fe", "Cl"], tmp_path)
    msg = str(err.value)
    assert "Cl" in msg and "Fe" in msg and "Li" in msg and "Si," not in msg and str(tmp_path) in msg
    with pytest.raises(qe.PseudoError, match="does not exist"):
        qe.find_pseudos(["Si"], tmp_path / "nope")


def test_find_pseudos_md5_mismatch_is_an_error(tmp_path):
    shutil.copy(PSEUDO / "sssp_efficiency_1.3_subset.json", tmp_path)
    (tmp_path / "Si.pbe-n-rrkjus_psl.1.0.0.UPF").write_text("not the SSSP file")
    with pytest.raises(qe.PseudoError, match="md5"):
        qe.find_pseudos(["Si"], tmp_path)


def test_protocol_cutoffs_per_system():
    s = settings()
    p_si = qe.protocol(["Si"], s)
    p_lio = qe.protocol(["Li", "O"], s)
    assert (p_si["ecutwfc"], p_si["ecutrho"]) == (30.0, 240.0)
    assert (p_lio["ecutwfc"], p_lio["ecutrho"]) == (50.0, 400.0)  # O's recommendation beats Li's 40/320
    assert p_lio["pseudos"]["O"]["md5"] == "0234752ac141de4415c5fc33072bef88"
    assert set(p_lio["pseudos"]) == {"Li", "O"} and p_lio["functional"] == "PBE" and p_lio["code"] == "qe"
    assert qe.protocol(["O", "Li"], s)["id"] == p_lio["id"] != p_si["id"]
    assert len(p_si["id"]) == 12
    over = qe.protocol(["Si"], settings(ecutwfc=40))
    assert over["ecutwfc"] == 40.0 and over["ecutrho"] == 240.0 and over["id"] != p_si["id"]
    assert qe.protocol(["Si"], settings(ecutwfc=80))["ecutrho"] == 320.0  # at least 4 x ecutwfc
    assert qe.protocol(["Si"], settings(degauss=0.02))["id"] != p_si["id"]
    assert qe.protocol(["Si"], settings(mixing_beta=0.3))["id"] == p_si["id"]  # not part of the physics
    assert p_si["spin"]["system_spin_polarized"] is False


def test_protocol_without_cutoff_table_uses_spec_defaults(tmp_path):
    shutil.copy(PSEUDO / "Si.pbe-n-rrkjus_psl.1.0.0.UPF", tmp_path)
    p = qe.protocol(["Si"], settings(pseudo_dir=str(tmp_path)))
    assert (p["ecutwfc"], p["ecutrho"]) == (45.0, 360.0)
    p = qe.protocol(["Si"], settings(pseudo_dir=str(tmp_path), default_ecutwfc=35, default_ecutrho=280))
    assert (p["ecutwfc"], p["ecutrho"]) == (35.0, 280.0)


# --------------------------------------------------------------------------------------- parse_output
def test_parse_vc_relax_output():
    p = qe.parse_output(read_out("si_vc-relax.out.gz"))
    assert p["version"] == "6.7MaX" and p["nat"] == 2 and p["nelec"] == 8.0 and p["nspin"] == 1
    assert p["ionic_steps"] == 5 and len(p["energies"]) == 5
    assert p["energy"] == pytest.approx(-22.83929817 * qe.RY_TO_EV, abs=1e-6)
    assert p["scf_converged"] and p["relax_converged"] and p["bfgs_converged"] and p["job_done"]
    assert not p["max_steps_reached"] and not p["max_time_reached"] and p["errors"] == []
    st = Structure.from_dict(p["structure"])
    assert st.lattice.abc[0] * 2 ** 0.5 == pytest.approx(5.469, abs=0.002)  # conventional a
    assert st.lattice.angles[0] == pytest.approx(60.0, abs=0.01)
    assert p["pressure_kbar"] == pytest.approx(0.08) and p["pw_wall_seconds"] == pytest.approx(96.7)
    assert p["n_scf_iterations"] == 36


def test_parse_nscf_output_and_band_gap():
    p = qe.parse_output(read_out("si_nscf_11x11x11.out.gz"))
    assert p["band_structure_done"] and p["energy"] is None and p["nkpts"] == [56]
    assert len(p["eigenvalues"]) == 1 and len(p["eigenvalues"][0]) == 56 and len(p["kpoints"]) == 56
    assert all(len(b) == 8 for b in p["eigenvalues"][0])
    assert p["eigenvalues"][0][0][:2] == [-5.8317, 5.9858]
    assert p["fermi"] == pytest.approx(5.9887)
    g = qe.band_gap(p)
    assert g["band_gap"] == pytest.approx(0.6368, abs=1e-4) and not g["is_direct"] and not g["is_metal"]
    assert g["direct_gap"] == pytest.approx(2.5528, abs=1e-4)
    assert (g["vbm"], g["cbm"]) == (pytest.approx(5.9858), pytest.approx(6.6226))


def test_parse_stopped_and_failed_outputs():
    p = qe.parse_output(read_out("si_vc-relax_max_seconds.out.gz"))
    assert p["max_time_reached"] and p["job_done"] and not p["relax_converged"] and p["ionic_steps"] == 1
    assert Structure.from_dict(p["structure"]).lattice.abc[0] == pytest.approx(3.8528, abs=1e-3)  # 1 step on
    p = qe.parse_output(read_out("si_vc-relax_nstep2.out.gz"))
    assert p["max_steps_reached"] and not p["relax_converged"] and p["structure"]
    p = qe.parse_output(read_out("si_scf_maxstep3.out.gz"))
    assert p["scf_not_converged"] and not p["scf_converged"] and p["n_scf_iterations"] == 3
    p = qe.parse_output(read_out("si_scf_missing_upf.out"))
    assert p["errors"][0]["routine"] == "readpp" and "Si.missing.UPF not found" in p["errors"][0]["message"]
    assert not p["job_done"]
    p = qe.parse_output(read_out("al_scf_fixed_occupations.out"))
    assert p["errors"] == [{"routine": "electrons", "code": 1, "message": "charge is wrong: smearing is needed"}]


def test_parse_metal_and_spin_polarised_outputs():
    p = qe.parse_output(read_out("al_nscf_7x7x7.out.gz"))
    assert p["nspin"] == 1 and len(p["eigenvalues"][0]) == 20 and p["fermi"] == pytest.approx(7.9883)
    g = qe.band_gap(p)
    assert g["is_metal"] and g["band_gap"] == 0.0 and g["vbm"] is None
    p = qe.parse_output(read_out("o2_box5_scf.out.gz"))  # O2 triplet, Gamma point, nspin=2
    assert p["nspin"] == 2 and len(p["eigenvalues"]) == 2 and p["total_magnetization"] == 2.0
    assert p["absolute_magnetization"] == 2.05 and p["scf_converged"] and p["kpoints"] == [[0.0, 0.0, 0.0]]
    up, down = p["eigenvalues"][0][0], p["eigenvalues"][1][0]
    assert up[5:7] == [-5.4023, -5.4023] and down[5:7] == [-3.089, -3.089]  # the pi* pair: filled up, empty down
    g = qe.band_gap(p)
    assert not g["is_metal"] and g["band_gap"] == pytest.approx(2.3133, abs=1e-4)


def test_spin_policy_in_inputs(tmp_path):
    s = settings()
    fake = {"pseudos": {"Fe": {"filename": "Fe.pbe.UPF"}, "O": {"filename": "O.pbe.UPF"}, "Li": {"filename": "Li.UPF"}},
            "ecutwfc": 45.0, "ecutrho": 360.0, "smearing": "mv", "degauss": 0.01, "conv_thr_per_atom": 1e-9,
            "forc_conv_thr": 1e-3, "press_conv_thr": 0.5}
    st = Structure(Lattice.cubic(4.2), ["O", "Li", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    pwin = io.pw_input(st, fake, s, "scf", kind="crystal", workdir=tmp_path, prefix="p", kgrid=[2, 2, 2],
                        nat=3, max_seconds=10.4)
    text = str(pwin)
    species = [line.split()[0] for line in text.split("ATOMIC_SPECIES")[1].split("ATOMIC_POSITIONS")[0]
               .strip().splitlines()]
    assert species == ["Fe", "Li", "O"]  # ATOMIC_SPECIES order = starting_magnetization order
    assert "starting_magnetization(1) = 0.5" in text and "starting_magnetization(2) = 0.0" in text
    assert "starting_magnetization(3) = 0.0" in text and "nspin = 2" in text and "max_seconds = 10.0" in text
    assert "conv_thr = 3d-09" in text
    text = str(io.pw_input(si_prim(), fake | {"pseudos": {"Si": {"filename": "Si.UPF"}}}, s, "scf", kind="crystal",
                            workdir=tmp_path, prefix="p", kgrid=[2, 2, 2], nat=2, max_seconds=None))
    assert "nspin" not in text and "max_seconds" not in text


def test_band_gap_metal_spin_and_fallbacks():
    # a band crossing the Fermi level -> metal, gap 0
    metal = {"eigenvalues": [[[-1.0, 0.5, 2.0], [-1.0, -0.5, 2.0]]], "fermi": 0.0, "nelec": 2}
    g = qe.band_gap(metal)
    assert g["is_metal"] and g["band_gap"] == 0.0 and g["direct_gap"] == 0.0
    # spin-polarised insulator: up has 2 occupied, down 1; gap = min CBM - max VBM over both channels
    spin = {"eigenvalues": [[[-2.0, -1.0, 1.5], [-2.1, -0.8, 1.2]], [[-1.5, 0.9, 2.0], [-1.4, 1.0, 2.1]]],
            "fermi": 0.0}
    g = qe.band_gap(spin)
    assert not g["is_metal"] and g["vbm"] == -0.8 and g["cbm"] == 0.9
    assert g["band_gap"] == pytest.approx(1.7) and g["direct_gap"] == pytest.approx(1.8) and not g["is_direct"]
    # no Fermi level: HOMO, else nelec
    g = qe.band_gap({"eigenvalues": [[[-1.0, 1.0], [-0.5, 0.8]]], "homo": -0.5})
    assert g["band_gap"] == pytest.approx(1.3) and g["is_direct"]
    g = qe.band_gap({"eigenvalues": [[[-1.0, 1.0], [-0.5, 0.8]]], "nelec": 2})
    assert g["band_gap"] == pytest.approx(1.3)
    assert qe.band_gap({"eigenvalues": []})["band_gap"] is None


# ------------------------------------------------------------------------------------------ handlers
def write_case(directory: Path, out_text: str, calculation: str = "scf", structure=None, **settings_over):
    """An input written the way run_chain writes it, plus a pw.x output."""
    s = settings(**settings_over)
    structure = structure or si_prim()
    proto = qe.protocol(sorted({sp.symbol for sp in structure.composition}), s)
    pwin = io.pw_input(structure, proto, s, calculation, kind="crystal", workdir=directory, prefix="pwscf",
                        kgrid=[4, 4, 4], nat=len(structure), max_seconds=None)
    pwin.write_file(str(directory / "pw.in"))
    (directory / "pw.out").write_text(out_text)
    return directory


def sections(directory: Path) -> dict:
    return qe_jobs.read_input(directory / "pw.in").sections


def test_scf_convergence_handler(tmp_path):
    d = write_case(tmp_path, read_out("si_scf_maxstep3.out.gz"), electron_maxstep=3)
    h = qe_jobs.PWSCFConvergenceHandler("pw.in", "pw.out")
    assert h.check(d)
    assert sections(d)["electrons"]["conv_thr"] == pytest.approx(2e-9)
    r = h.correct(d)  # 1: conv_thr x10 toward 1e-8 * nat
    assert r["actions"] and sections(d)["electrons"]["conv_thr"] == pytest.approx(2e-8)
    h.correct(d)  # 2: at 1e-8 * nat -> mixing and electron_maxstep
    el = sections(d)["electrons"]
    assert el["conv_thr"] == pytest.approx(2e-8)
    assert el["mixing_beta"] == pytest.approx(0.3) and el["electron_maxstep"] == 200 and el["mixing_ndim"] == 12
    for _ in range(10):
        r = h.correct(d)
        if r["actions"] is None:
            break
    assert r["actions"] is None  # nothing left to change: unrecoverable
    assert sections(d)["electrons"]["mixing_beta"] == pytest.approx(0.1)
    assert sections(d)["control"]["outdir"] == str(tmp_path / "tmp")  # strings survive the round trip
    (d / "pw.out").write_text(read_out("si_vc-relax.out.gz"))
    assert not h.check(d)


def test_diagonalization_handler(tmp_path):
    # the block pw.x prints when cdiaghg fails (as in QE 6.7's output format)
    snippet = ("     Davidson diagonalization with overlap\n\n"
               " %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%\n"
               "     Error in routine cdiaghg (159):\n"
               "     S matrix not positive definite\n"
               " %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%\n\n"
               "     stopping ...\n")
    d = write_case(tmp_path, snippet)
    h = qe_jobs.PWDiagonalizationHandler("pw.in", "pw.out")
    assert h.check(d) and not qe_jobs.PWFatalHandler("pw.in", "pw.out").check(d)
    r = h.correct(d)
    assert r["errors"] == ["S matrix not positive definite"]
    assert sections(d)["electrons"]["diagonalization"] == "cg"
    h.correct(d)
    assert sections(d)["electrons"]["diagonalization"] == "ppcg"
    h.correct(d)
    assert sections(d)["electrons"]["mixing_beta"] == pytest.approx(0.3)
    (d / "pw.out").write_text(snippet.replace("S matrix not positive definite", "too many bands are not converged")
                              .replace("cdiaghg (159)", "c_bands (1)"))
    assert h.check(d)


def test_smearing_handler(tmp_path):
    d = write_case(tmp_path, read_out("al_scf_fixed_occupations.out"), structure=al_prim())
    pwin = qe_jobs.read_input(d / "pw.in")
    for key in ("occupations", "smearing", "degauss"):
        pwin.sections["system"].pop(key)
    pwin.write_file(str(d / "pw.in"))
    h = qe_jobs.PWSmearingHandler("pw.in", "pw.out", smearing="mv", degauss=0.02)
    assert h.check(d) and not qe_jobs.PWFatalHandler("pw.in", "pw.out").check(d)
    assert h.correct(d)["actions"]
    sysd = sections(d)["system"]
    assert (sysd["occupations"], sysd["smearing"], sysd["degauss"]) == ("smearing", "mv", 0.02)
    assert h.correct(d)["actions"] is None  # already smearing: nothing more to do


def test_relax_restart_handler(tmp_path):
    d = write_case(tmp_path, read_out("si_vc-relax_nstep2.out.gz"), calculation="vc-relax")
    before = qe_jobs.read_input(d / "pw.in").structure
    h = qe_jobs.PWRelaxRestartHandler("pw.in", "pw.out")
    assert h.check(d)
    r = h.correct(d)
    assert r["errors"] == ["The maximum number of steps has been reached."] and r["actions"]
    after = qe_jobs.read_input(d / "pw.in")
    expected = Structure.from_dict(qe.parse_output(read_out("si_vc-relax_nstep2.out.gz"))["structure"])
    assert after.structure.lattice.abc[0] == pytest.approx(expected.lattice.abc[0], abs=1e-6)
    assert after.structure.lattice.abc[0] != pytest.approx(before.lattice.abc[0], abs=1e-4)
    assert after.sections["control"]["calculation"] == "vc-relax" and after.kpoints_grid == (4, 4, 4)
    (d / "pw.out").write_text(read_out("si_vc-relax_nstep2.out.gz").replace(
        "The maximum number of steps has been reached.", "history already reset at previous step: stopping"))
    assert h.correct(d)["errors"] == ["history already reset at previous step: stopping"]


def test_fatal_and_walltime_handlers_and_validator(tmp_path):
    d = write_case(tmp_path, read_out("si_scf_missing_upf.out"))
    fatal = qe_jobs.PWFatalHandler("pw.in", "pw.out")
    assert fatal.check(d)
    r = fatal.correct(d)
    assert r["actions"] is None and "readpp" in r["errors"][0] and "Si.missing.UPF not found" in r["errors"][0]
    v = qe_jobs.PWValidator("pw.out")
    assert v.check(d)  # no JOB DONE
    (d / "pw.out").write_text(read_out("si_vc-relax.out.gz"))
    assert not fatal.check(d) and not v.check(d)
    (d / "pw.rc").write_text("2\n")
    assert v.check(d)  # a non-zero return code fails validation
    wall = qe_jobs.PWWalltimeHandler("pw.in", "pw.out", deadline=time.time() + 3600)
    assert wall.is_monitor and not wall.check(d)
    (d / "pw.out").write_text(read_out("si_vc-relax_max_seconds.out.gz"))
    assert wall.check(d) and wall.correct(d)["actions"] is None
    (d / "pw.out").write_text("     Program PWSCF v.6.7MaX starts on ...\n")  # still running past the deadline
    assert qe_jobs.PWWalltimeHandler("pw.in", "pw.out", deadline=time.time() - 60, grace_s=10).check(d)
    assert not qe_jobs.PWWalltimeHandler("pw.in", "pw.out", deadline=time.time() - 5, grace_s=10).check(d)


def test_pwjob_serialises_and_builds_command():
    job = qe_jobs.PWJob(pw_cmd="pw.x -nk 2", mpi_cmd="mpirun --allow-run-as-root -np 2", input_file="scf.in",
                        output_file="scf.out")
    assert job.argv == ["mpirun", "--allow-run-as-root", "-np", "2", "pw.x", "-nk", "2", "-in", "scf.in"]
    again = qe_jobs.PWJob.from_dict(job.as_dict())
    assert again.argv == job.argv
    hs = qe_jobs.default_handlers("scf.in", "scf.out", deadline=123.0)
    assert [type(h).from_dict(h.as_dict()).output_file for h in hs] == ["scf.out"] * len(hs)
    assert hs[0].deadline == 123.0 and isinstance(hs[0], qe_jobs.PWWalltimeHandler)


# ------------------------------------------------------------------------------------ real pw.x runs
def test_run_chain_missing_pseudo_fails_without_running(tmp_path):
    s = settings()
    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(qe.PseudoError, match="Cl"):
        qe.protocol(["Na", "Cl"], s)
    # a protocol made elsewhere, run where the folder lacks the file
    only_na = tmp_path / "pseudo"
    only_na.mkdir()
    shutil.copy(PSEUDO / "na_pbe_v1.5.uspp.F.UPF", only_na)
    (only_na / "Cl.pbe-fake.UPF").write_text("x")
    proto = qe.protocol(["Na", "Cl"], settings(pseudo_dir=str(only_na)))
    (only_na / "Cl.pbe-fake.UPF").unlink()
    r = qe.run_chain(nacl, proto, settings(pseudo_dir=str(only_na)), tmp_path / "w")
    assert r["status"] == "failed" and "Cl" in r["reason"] and str(only_na) in r["reason"]
    assert r["structure"] is None and r["steps"] == [] and r["energy_total"] is None
    assert not any((tmp_path / "w").iterdir())  # pw.x never ran
    # a protocol of another system
    r = qe.run_chain(nacl, qe.protocol(["Na"], s), s, tmp_path / "w2")
    assert r["status"] == "failed" and "Cl" in r["reason"]
    json.dumps({k: v for k, v in r.items() if k != "structure"})


@pytest.fixture(scope="module")
def si_run(tmp_path_factory):
    if PW is None:
        pytest.skip("pw.x (Quantum ESPRESSO) is not on PATH")
    s = settings()
    proto = qe.protocol(["Si"], s)
    t0 = time.time()
    r = qe.run_chain(si_prim(5.43), proto, s, tmp_path_factory.mktemp("si"))
    r["_wall"] = time.time() - t0
    return r


@needs_pw
def test_si_chain_lattice_and_gap(si_run):
    r = si_run
    assert r["status"] == "completed", r["reason"]
    assert [st["calculation"] for st in r["steps"]] == ["vc-relax", "scf", "nscf"]
    assert all(st["converged"] for st in r["steps"])
    a = r["structure"].lattice.abc[0] * 2 ** 0.5
    assert a == pytest.approx(5.47, rel=0.01)
    g = r["band_gap"]
    assert 0.5 <= g["band_gap"] <= 0.65 and not g["is_direct"] and not g["is_metal"]
    assert r["natoms"] == 2 and r["energy_per_atom"] == pytest.approx(r["energy_total"] / 2)
    assert r["energy_total"] == pytest.approx(r["steps"][1]["energy"])
    assert abs(r["energy_total"] - r["steps"][0]["energy"]) < 1e-3  # last '!' of the vc-relax, fresh basis
    assert r["steps"][2]["kpts"] == [7, 7, 7] and r["steps"][0]["kpts"] == [6, 6, 6]
    assert r["pw_seconds"] > 0 and r["seconds"] >= r["pw_seconds"] * 0.5 and r["checkpoint"] is None
    assert r["total_magnetization"] is None and r["corrections"] == []
    json.dumps({k: v for k, v in r.items() if k != "structure"})
    print(f"Si: a = {a:.4f} A, gap = {g['band_gap']:.4f} eV, wall {r['_wall']:.1f} s")


@pytest.fixture(scope="module")
def al_run(tmp_path_factory):
    if PW is None:
        pytest.skip("pw.x (Quantum ESPRESSO) is not on PATH")
    s = settings(kppa=300, nscf_kppa=500)
    return qe.run_chain(al_prim(), qe.protocol(["Al"], s), s, tmp_path_factory.mktemp("al"))


@needs_pw
def test_al_chain_is_metal(al_run):
    r = al_run
    assert r["status"] == "completed", r["reason"]
    assert r["band_gap"]["is_metal"] and r["band_gap"]["band_gap"] == 0.0
    assert r["structure"].lattice.abc[0] * 2 ** 0.5 == pytest.approx(4.04, rel=0.015)


@needs_pw
def test_scf_nonconvergence_is_corrected(al_run, tmp_path):
    s = settings(kppa=300, nscf_kppa=500, electron_maxstep=3)
    r = qe.run_chain(al_prim(), qe.protocol(["Al"], s), s, tmp_path)
    assert r["status"] == "completed", r["reason"]
    handlers = {c["handler"] for c in r["corrections"]}
    assert handlers == {"PWSCFConvergenceHandler"}
    assert all(c["errors"] == ["scf not converged"] for c in r["corrections"])
    assert {c["step"] for c in r["corrections"]} >= {"vc-relax", "scf"}
    assert r["steps"][0]["corrections"] and r["steps"][1]["corrections"]
    assert r["energy_per_atom"] == pytest.approx(al_run["energy_per_atom"], abs=2e-3)
    assert r["band_gap"]["is_metal"]
    assert (tmp_path / "scf" / "scf.out.1").exists() and (tmp_path / "scf" / "custodian.json").exists()


@needs_pw
def test_walltime_checkpoint_before_start_then_resume(al_run, tmp_path):
    s = settings(kppa=300, nscf_kppa=500)
    proto = qe.protocol(["Al"], s)
    r = qe.run_chain(al_prim(3.95), proto, s, tmp_path / "a", walltime_s=1.0)
    assert r["status"] == "checkpoint" and r["steps"] == [] and "vc-relax" in r["reason"]
    ck = json.loads(json.dumps(r["checkpoint"]))  # JSON round trip, as through a Firework spec
    r2 = qe.run_chain(None, proto, s, tmp_path / "b", checkpoint=ck)
    assert r2["status"] == "completed", r2["reason"]
    assert r2["energy_per_atom"] == pytest.approx(al_run["energy_per_atom"], abs=2e-3)


@needs_pw
def test_walltime_checkpoint_mid_vc_relax_then_resume(si_run, tmp_path):
    s = settings()
    proto = qe.protocol(["Si"], s)
    r = qe.run_chain(si_prim(5.30), proto, s, tmp_path / "a", walltime_s=7.0)
    assert r["status"] == "checkpoint", r["reason"]
    ck = json.loads(json.dumps(r["checkpoint"]))
    assert ck["structure"] and ck["protocol_id"] == proto["id"]
    if not ck["steps"]:  # stopped inside the vc-relax by pw.x's max_seconds
        assert r["steps"][0]["calculation"] == "vc-relax" and not r["steps"][0]["converged"]
    r2 = qe.run_chain(None, proto, s, tmp_path / "b", checkpoint=ck)
    assert r2["status"] == "completed", r2["reason"]
    assert [st["calculation"] for st in r2["steps"]] == ["vc-relax", "scf", "nscf"]
    assert r2["structure"].lattice.abc[0] * 2 ** 0.5 == pytest.approx(5.47, rel=0.01)
    assert r2["energy_per_atom"] == pytest.approx(si_run["energy_per_atom"], abs=2e-3)
    assert r2["band_gap"]["band_gap"] == pytest.approx(si_run["band_gap"]["band_gap"], abs=0.02)
    assert r2["seconds"] >= ck["seconds"]


@needs_pw
def test_o2_molecule_small_box(tmp_path):
    """Spin-polarised molecule path: O2 relaxes to a triplet (2 Bohr mag) in a small, cheap box."""
    s = settings(ecutwfc=30, ecutrho=240)
    o2 = molecule_in_box("O", box=5.0, bond=1.25)
    r = qe.run_chain(o2, qe.protocol(["O"], s), s, tmp_path, kind="molecule")
    assert r["status"] == "completed", r["reason"]
    assert [st["calculation"] for st in r["steps"]] == ["relax", "scf"]
    assert r["band_gap"] is None and r["steps"][0]["kpts"] == "gamma"
    assert r["total_magnetization"] == pytest.approx(2.0, abs=0.05)
    d = r["structure"].get_distance(0, 1)
    assert 1.15 < d < 1.32


@needs_pw
@pytest.mark.slow
def test_o2_molecule_sssp_box(tmp_path):
    """O2 at the spec's 10 A box and SSSP cutoffs (~1 min, ~0.9 GB)."""
    s = settings()
    r = qe.run_chain(molecule_in_box("O", box=s["molecule_box"]), qe.protocol(["O"], s), s, tmp_path, kind="molecule")
    assert r["status"] == "completed", r["reason"]
    assert r["total_magnetization"] == pytest.approx(2.0, abs=0.05)
    assert 1.20 < r["structure"].get_distance(0, 1) < 1.26


def test_find_pseudos_reads_the_official_flat_sssp_json(tmp_path):
    """SSSP_1.3.0_PBE_efficiency.json as distributed: {El: {filename, md5, cutoff_wfc, cutoff_rho}}."""
    wrapped = json.loads((PSEUDO / "sssp_efficiency_1.3_subset.json").read_text())["elements"]
    flat = {el: {"filename": r["filename"], "md5": r["md5"], "cutoff_wfc": r["cutoff_wfc_ry"],
                 "cutoff_rho": r["cutoff_rho_ry"], "pseudopotential": r["family"]} for el, r in wrapped.items()}
    for f in PSEUDO.glob("*.UPF"):
        shutil.copy(f, tmp_path)
    (tmp_path / "SSSP_1.3.0_PBE_efficiency.json").write_text(json.dumps(flat))
    found = qe.find_pseudos(["Li", "O"], str(tmp_path))
    assert (found["O"]["ecutwfc"], found["O"]["ecutrho"]) == (50.0, 400.0)
    assert found["Li"]["filename"] == "li_pbe_v1.4.uspp.F.UPF"  # not guessable from the name alone
