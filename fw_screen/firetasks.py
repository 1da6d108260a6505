"""FireTasks: thin glue between a Firework and a stage runner of :mod:`fw_screen.campaign`.

Each task finds the results database through ``db_file`` (default ``>>db_file<<``, the FWorker's env, as
atomate does; else the ``FW_SCREEN_LAUNCHPAD`` environment variable), calls one runner, and returns an
``FWAction`` whose ``stored_data`` holds the runner's counts.
"""

from __future__ import annotations

import os

from fireworks import FiretaskBase, FWAction, explicit_serialize

from fw_screen import campaign
from fw_screen.db import ResultsStore


def resolve_db_file(value: str | None, fw_spec: dict) -> str:
    """``>>key<<`` looks ``key`` up in the FWorker env; a path is used as it is."""
    value = value or ">>db_file<<"
    if value.startswith(">>") and value.endswith("<<"):
        value = (fw_spec.get("_fw_env") or {}).get(value[2:-2]) or os.environ.get("FW_SCREEN_LAUNCHPAD")
    if not value:
        raise RuntimeError("no results database: give the FWorker env a db_file (a LaunchPad YAML path), "
                           "or set FW_SCREEN_LAUNCHPAD")
    return os.path.expanduser(value)


_STORES: dict[str, ResultsStore] = {}


def _store(task: FiretaskBase, fw_spec: dict) -> ResultsStore:
    """One client per database file per process: ``rlaunch rapidfire`` runs many rockets in one process."""
    path = resolve_db_file(task.get("db_file"), fw_spec)
    if path not in _STORES:
        _STORES[path] = ResultsStore.from_file(path)
    return _STORES[path]


@explicit_serialize
class IngestTask(FiretaskBase):
    """Ingest ``source`` into the campaign of ``spec``, then add the cheap-stage Fireworks for it."""

    required_params = ["source", "spec"]
    optional_params = ["db_file", "submission"]

    def run_task(self, fw_spec):
        from fw_screen.workflows import stage_workflow

        store = _store(self, fw_spec)
        summary = campaign.run_ingest(store, self["source"], self["spec"], submission=self.get("submission"))
        wf = stage_workflow(summary["campaign"], summary["batches"], self["spec"], db_file=self.get("db_file"))
        return FWAction(stored_data={k: v for k, v in summary.items() if k != "batches"},
                        additions=[wf] if wf else None)


@explicit_serialize
class ValidityTask(FiretaskBase):
    """Validity checks for one batch of candidates."""

    required_params = ["campaign", "batch"]
    optional_params = ["db_file"]

    def run_task(self, fw_spec):
        counts = campaign.run_validity(_store(self, fw_spec), self["campaign"], self["batch"])
        return FWAction(stored_data=counts)


@explicit_serialize
class UniquenessTask(FiretaskBase):
    """Uniqueness within the campaign and novelty against references, for one formula shard."""

    required_params = ["campaign", "shard"]
    optional_params = ["db_file"]

    def run_task(self, fw_spec):
        from fw_screen.workflows import ml_fireworks

        store = _store(self, fw_spec)
        counts = campaign.run_uniqueness(store, self["campaign"], int(self["shard"]))
        fws = ml_fireworks(self["campaign"], counts.get("ml_batches", []), store.campaign_spec(self["campaign"]),
                           db_file=self.get("db_file"))
        counts["ml_batches"] = len(counts.get("ml_batches", []))
        return FWAction(stored_data=counts, additions=fws or None)


@explicit_serialize
class StabilityTask(FiretaskBase):
    """ML relaxation, energy above hull, band gap and target hits for one ML batch of novel candidates."""

    required_params = ["campaign", "ml_batch"]
    optional_params = ["db_file"]

    def run_task(self, fw_spec):
        import torch

        # one thread per worker process: parallelism comes from more rlaunch processes; two torch
        # threads per process on a busy 2-core node made predictions ~100x slower (measured)
        torch.set_num_threads(int(os.environ.get("FW_SCREEN_TORCH_THREADS", "1")))
        store = _store(self, fw_spec)
        counts = campaign.run_stability(store, self["campaign"], self["ml_batch"])
        return FWAction(stored_data=counts, additions=_after_ml_stage(self, store, counts))


def _after_ml_stage(task: FiretaskBase, store: ResultsStore, counts: dict) -> list | None:
    """The last ML (or DFT-lite) Firework of a campaign adds what comes next (:func:`fw_screen.workflows.after_ml_stage`)."""
    spec = store.campaign_spec(task["campaign"])
    if not (spec["promotion"]["auto"] and campaign.ml_stage_finished(store, task["campaign"])):
        return None
    from fw_screen.workflows import after_ml_stage

    wfs, info = after_ml_stage(store, task["campaign"], db_file=task.get("db_file"))
    counts.update(info)
    return wfs or None


def _dft_env(fw_spec: dict) -> dict:
    """The FWorker env (pw_cmd, mpi_cmd, pseudo_dir ...), as atomate reads >>vasp_cmd<<."""
    return dict(fw_spec.get("_fw_env") or {})


def _continuation(task: FiretaskBase, fw_spec: dict, checkpoint: dict) -> FWAction:
    """Wall time reached: the same task, resumed from ``checkpoint``, as a new Firework (any DFT worker)."""
    from fireworks import Firework

    params = {k: v for k, v in task.items() if k != "checkpoint" and not k.startswith("_")}
    new_spec = {k: v for k, v in fw_spec.items() if not k.startswith("_") or k in ("_category", "_priority",
                                                                                     "_add_launchpad_and_fw_id")}
    new_spec["continuation"] = int(fw_spec.get("continuation", 0)) + 1
    fw = Firework(type(task)(checkpoint=checkpoint, **params), spec=new_spec,
                  name=f"{fw_spec.get('stage', 'dft')} continuation {new_spec['continuation']}")
    return FWAction(stored_data={"status": "checkpoint"}, additions=[fw])


@explicit_serialize
class QECandidateTask(FiretaskBase):
    """Quantum ESPRESSO relax, band gap and (when its references are done) DFT hull of one promoted candidate."""

    required_params = ["candidate"]
    optional_params = ["db_file", "checkpoint"]

    def run_task(self, fw_spec):
        out = campaign.run_dft_candidate(_store(self, fw_spec), self["candidate"], os.getcwd(), _dft_env(fw_spec),
                                         checkpoint=self.get("checkpoint"),
                                         fw_id=getattr(self, "fw_id", None))  # set by _add_launchpad_and_fw_id
        if out["status"] == "checkpoint":
            return _continuation(self, fw_spec, out["checkpoint"])
        return FWAction(stored_data=out)


@explicit_serialize
class DFTLiteTask(FiretaskBase):
    """The DFT-lite band gap (QE scf + nscf at the ML-relaxed structure) of one ML-stable candidate."""

    required_params = ["candidate", "campaign"]
    optional_params = ["db_file", "checkpoint"]

    def run_task(self, fw_spec):
        store = _store(self, fw_spec)
        out = campaign.run_dft_lite(store, self["candidate"], os.getcwd(), _dft_env(fw_spec),
                                    checkpoint=self.get("checkpoint"))
        if out["status"] == "checkpoint":
            return _continuation(self, fw_spec, out["checkpoint"])
        # after_ml_stage waits while other DFT-lite gaps are pending: the last one promotes
        return FWAction(stored_data=out, additions=_after_ml_stage(self, store, out))


@explicit_serialize
class QEReferenceTask(FiretaskBase):
    """One reference phase of a chemical system, computed with that system's QE protocol (once)."""

    required_params = ["campaign", "system", "phase"]
    optional_params = ["db_file", "checkpoint"]

    def run_task(self, fw_spec):
        out = campaign.run_dft_reference(_store(self, fw_spec), self["campaign"], self["system"], self["phase"],
                                         os.getcwd(), _dft_env(fw_spec), checkpoint=self.get("checkpoint"),
                                         fw_id=getattr(self, "fw_id", None))  # set by _add_launchpad_and_fw_id
        if out["status"] == "checkpoint":
            return _continuation(self, fw_spec, out["checkpoint"])
        return FWAction(stored_data=out)
