"""Workflows: which Fireworks a submission becomes.

A submission of N candidates becomes ceil(N / batch_size) validity Fireworks (category ``cheap``), all
parents of ``dedup_shards`` uniqueness Fireworks; each uniqueness Firework adds, when it has decided, one
stability Firework (category ``ml``) per ``ml.batch_size`` novel candidates.  Two ways in:

* :func:`stage_workflow` after the CLI has ingested client-side (``fw-screen submit``);
* :func:`ingest_workflow`, a one-Firework workflow that ingests on a worker and adds the stage Fireworks
  itself: write it with ``fw-screen workflow INPUT -o wf.yaml`` and ``lpad add wf.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from fireworks import Firework, Workflow

from fw_screen.firetasks import IngestTask, StabilityTask, UniquenessTask, ValidityTask


def _task_kwargs(db_file: str | None) -> dict:
    return {"db_file": db_file} if db_file else {}


def stage_workflow(campaign: str, batches: list[str], spec: dict, db_file: str | None = None) -> Workflow | None:
    """Validity Fireworks for ``batches`` feeding the uniqueness shards; None when there is nothing new."""
    if not batches:
        return None
    category = spec["fireworks"]["category_cheap"]
    kw = _task_kwargs(db_file)
    validity = [Firework(ValidityTask(campaign=campaign, batch=b, **kw), name=f"validity {b}",
                         spec={"_category": category, "campaign": campaign, "stage": "validity", "batch": b})
                for b in batches]
    dedup = [Firework(UniquenessTask(campaign=campaign, shard=i, **kw), name=f"uniqueness {campaign} shard {i}",
                      spec={"_category": category, "campaign": campaign, "stage": "uniqueness"})
             for i in range(spec["dedup_shards"])]
    links = {fw: dedup for fw in validity}
    submission = batches[0].rsplit(".", 1)[0]
    return Workflow(validity + dedup, links_dict=links, name=f"fw-screen {campaign} {submission}",
                    metadata={"campaign": campaign, "submission": submission, "batches": len(batches)})


def ml_fireworks(campaign: str, ml_batches: list[str], spec: dict, db_file: str | None = None) -> list[Firework]:
    """One ML Firework (category ``ml``) per ML batch of novel candidates."""
    return [Firework(StabilityTask(campaign=campaign, ml_batch=b, **_task_kwargs(db_file)),
                     name=f"stability {b}", spec={"_category": spec["fireworks"]["category_ml"], "campaign": campaign,
                                                  "stage": "stability", "ml_batch": b})
            for b in ml_batches]


def ingest_workflow(source: str | Path, spec: dict, db_file: str | None = None) -> Workflow:
    """One Firework that ingests ``source`` (an absolute path workers can read) and grows the rest."""
    source = str(Path(source).resolve())
    fw = Firework(IngestTask(source=source, spec=spec, **_task_kwargs(db_file)), name=f"ingest {Path(source).name}",
                  spec={"_category": spec["fireworks"]["category_cheap"], "campaign": spec["campaign"],
                        "stage": "ingest"})
    return Workflow([fw], name=f"fw-screen {spec['campaign']} {Path(source).name}",
                    metadata={"campaign": spec["campaign"], "source": source})


def submit(launchpad, store, source: str | Path, spec: dict, progress=None) -> tuple[dict, Workflow | None]:
    """Ingest ``source`` client-side and add one workflow for every batch that has no Firework yet.

    Batches left without a workflow by an interrupted earlier submit are picked up here too, so a
    re-submission heals instead of stranding candidates in ``ingested``.
    """
    from fw_screen.campaign import run_ingest
    from fw_screen.db import batches_with_fireworks

    summary = run_ingest(store, source, spec, progress=progress)
    name = summary["campaign"]
    batches = sorted(store.pending_batches(name) - batches_with_fireworks(launchpad, name))
    summary["workflow_batches"] = batches
    wf = stage_workflow(name, batches, store.campaign_spec(name))
    if wf is not None:
        launchpad.add_wf(wf)
    return summary, wf


def promote_to_ml(launchpad, store, campaign: str, db_file: str | None = None) -> list[str]:
    """Give novel candidates that have no ML batch yet (older campaigns, interrupted runs) ML Fireworks."""
    from fw_screen.campaign import plan_ml_batches

    spec = store.campaign_spec(campaign)
    batches = plan_ml_batches(store, campaign, store.unbatched_novel(campaign), spec)
    fws = ml_fireworks(campaign, batches, spec, db_file)
    if fws:
        launchpad.add_wf(Workflow(fws, name=f"fw-screen {campaign} ML", metadata={"campaign": campaign}))
    return batches
