"""``fw-screen demo``: the whole cheap funnel, and one candidate through DFT, on the bundled CrystaLLM-pi
generations: start the embedded database, load the shipped references, submit, run local workers until the
LaunchPad has no work left, and collect what the campaign found.

:func:`run_demo` does it step by step, yielding one event (a dict, ``event`` naming the step) after each, so
that a caller can say what happened while the workers still run; :func:`demo_findings` reads the results
the summary shows.  The funnel counts and the HTML report come from ``fw_screen.reporting`` (the CLI calls
them with :func:`demo_report_path`): orchestration does not import the reporting room.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

from fw_screen.server import embedded as server
from fw_screen.spec import CampaignSpec

#: the demo's generations, in :func:`examples_dir`
DEMO_INPUT = "crystallm_pi_generated_8k.parquet"
#: how many of the lowest candidates above the ML hull the summary lists
TOP = 10


def examples_dir() -> Path:
    """The demo's inputs: ``fw_screen/examples`` of an installed wheel (the repository's ``examples/``
    folder, shipped as ``fw_screen.examples``), else ``examples/`` of the source checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "examples"
    return installed if (installed / DEMO_INPUT).is_file() else package.parent / "examples"


def demo_inputs(source: str | None = None, references: list[str] | None = None,
                examples: Path | None = None) -> tuple[str, list[str]]:
    """``(generations, reference files)``: the given ones, else the bundled parquet and ``mp*.json.gz``."""
    examples = examples_dir() if examples is None else Path(examples)
    refs = references if references is not None else sorted(str(p) for p in examples.glob("mp*.json.gz"))
    return source or str(examples / DEMO_INPUT), refs


def demo_spec(campaign: str = "demo", dft_candidates: int = 1, examples: Path | None = None) -> CampaignSpec:
    """The demo's campaign spec: the default one, promoting ``dft_candidates`` to a quick DFT.

    The demo carries the single best ML candidate through DFT (Quantum ESPRESSO, SSSP pseudopotentials for
    its elements in examples/pseudo); a reference polymorph within 40 meV/atom of MP's lowest may stand in
    for it (black P, 4 sites, for MP's 42-site P), so that every reference cell stays small.  k-point
    densities at half the production defaults keep the demo's DFT to minutes (candidate and references
    share them, so its hull stays consistent); pw.x runs serially, one per worker: two MPI ranks sharing a
    core with the other worker's pw.x ran 9-11x slower (benchmarks/bench_dft.py).
    """
    from fw_screen.spec import load_spec

    pseudo = (examples_dir() if examples is None else Path(examples)) / "pseudo"
    return load_spec(campaign=campaign, promotion={"max_total": dft_candidates},
                     dft={"reference_polymorph_tolerance": 0.04,
                          "qe": {"kppa": 500, "nscf_kppa": 1500,
                                 "pseudo_dir": str(pseudo) if pseudo.is_dir() and not os.environ.get(
                                     "ESPRESSO_PSEUDO") else None}})


def demo_report_path(home: str | None, campaign: str) -> Path:
    """Where the demo writes its HTML report: ``report_CAMPAIGN.html`` in the embedded server's folder."""
    return server.home(home) / f"report_{campaign}.html"


def run_demo(home: str | None = None, source: str | None = None, references: list[str] | None = None,
             workers: int = 2, campaign: str = "demo", dft_candidates: int = 1,
             examples: Path | None = None) -> Iterator[dict]:
    """Run the demo, yielding after each step:

    * ``{"event": "database", "info": ...}``: the embedded server started (or found running),
      :func:`fw_screen.server.embedded.start`'s dict;
    * ``{"event": "references", "source": path, "result": ...}``: one reference file loaded
      (:func:`fw_screen.stages.load_references`'s dict);
    * ``{"event": "ingested", "summary": ...}``: the inputs submitted
      (:func:`fw_screen.orchestration.fireworks.submit`'s summary);
    * ``{"event": "workflow", "fireworks": n, "workers": n}``: a workflow was added, the workers start
      (not yielded when every batch already had its Fireworks);
    * ``{"event": "workers", "codes": [...]}``: the workers have stopped, their exit codes;
    * ``{"event": "done", "store", "spec", "campaign", "launchpad" (file), "started" (``time.perf_counter()``
      before the submission), "report_path"}`` and :func:`demo_findings`'s keys.
    """
    from fw_screen.orchestration.fireworks import submit
    from fw_screen.orchestration.launchpad import open_launchpad
    from fw_screen.orchestration.supervisor import launch_workers
    from fw_screen.stages import load_references
    from fw_screen.store import ResultsStore

    examples = examples_dir() if examples is None else Path(examples)
    source, ref_sources = demo_inputs(source, references, examples)
    info = server.start(home)
    yield {"event": "database", "info": info}
    lp_file = info["launchpad"]
    store = ResultsStore.from_launchpad(open_launchpad(lp_file))
    for src in ref_sources:
        yield {"event": "references", "source": src, "result": load_references(store, src)}
    spec = demo_spec(campaign, dft_candidates, examples)
    started = time.perf_counter()
    summary, wf = submit(open_launchpad(lp_file), store, source, spec)
    yield {"event": "ingested", "summary": summary}
    if wf is not None:
        yield {"event": "workflow", "fireworks": len(wf.fws), "workers": workers}
        codes = launch_workers(lp_file, str(server.home(home) / "fworker_all.yaml"), workers,
                               server.home(home) / "launches", progress=True)
        yield {"event": "workers", "codes": codes}
    yield {"event": "done", "store": store, "spec": spec, "campaign": spec.campaign, "launchpad": lp_file,
           "started": started, "report_path": demo_report_path(home, spec.campaign),
           **demo_findings(store, spec.campaign)}


def demo_findings(store, campaign: str, top: int = TOP) -> dict:
    """What the demo's summary lists beside the funnel: ``top`` (the ``top`` candidates lowest above the ML
    hull), ``no_reference`` (how many novel candidates have no reference hull) and ``promoted`` (the
    candidates promoted to DFT, with their results)."""
    from fw_screen import state as st

    return {"top": store.top_candidates(campaign, top),
            "no_reference": store.count({"campaign": campaign, "status": st.NO_REFERENCE}),
            "promoted": store.dft_candidates(campaign)}
