"""Every query the funnel's stages send to the candidates collection runs on an index.

A query that does not fit an index reads the whole campaign: unnoticed at 8,000 candidates, it turns a
100,000-candidate run quadratic (benchmarks/bench_scale.py found three such queries: one per validity batch,
one per uniqueness shard, one per ML batch).  The embedded server serves a filter from an index only when
its equality fields are exactly a leading prefix of the index, optionally followed by one range/``$in``
field.  Here the stages run against the real server with a pymongo command listener recording every
filter they send; each distinct filter shape is then explained.  A filter with an ``_id`` clause is a
primary-key lookup (the server looks that clause up alone), every other one must be an IXSCAN.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymongo import MongoClient, monitoring

from fw_screen import stages as cp
from fw_screen.reporting import funnel
from fw_screen import state as st
from fw_screen.store import CANDIDATES, ResultsStore, plan_nodes

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class FilterLog(monitoring.CommandListener):
    """The filters of the commands sent to the candidates collection."""

    def __init__(self):
        self.filters: list[tuple[str, dict]] = []

    def started(self, event):
        cmd = event.command
        name = event.command_name
        if cmd.get(name) != CANDIDATES:
            return
        if name == "find":
            self.filters.append((name, dict(cmd.get("filter") or {})))
        elif name in ("count", "distinct"):
            self.filters.append((name, dict(cmd.get("query") or {})))
        elif name == "aggregate":
            first = (cmd.get("pipeline") or [{}])[0]
            self.filters.append((name, dict(first.get("$match") or {})))
        elif name in ("update", "delete"):
            for op in cmd.get("updates") or cmd.get("deletes") or []:
                self.filters.append((name, dict(op.get("q") or {})))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def shape(flt: dict) -> str:
    """The filter with its values replaced by their operators (one explain per distinct shape)."""
    def of(v):
        return {k: of(x) for k, x in v.items()} if isinstance(v, dict) and any(
            str(k).startswith("$") for k in v) else "="
    return json.dumps({k: of(v) for k, v in flt.items()}, sort_keys=True)


def winning_stages(db, flt: dict) -> list[str]:
    plan = db.command("explain", {"find": CANDIDATES, "filter": flt}, verbosity="queryPlanner")
    return [node["stage"] for node in plan_nodes(plan["queryPlanner"]["winningPlan"])]


@pytest.fixture
def logged_store(launchpad):
    """A ResultsStore on the test's database through a client that records every command's filter."""
    log = FilterLog()
    client = MongoClient(launchpad.host, launchpad.port, event_listeners=[log], retryWrites=False)
    store = ResultsStore(client[launchpad.name])
    store.ensure_indexes()
    yield store, log
    client.close()


def test_the_check_sees_a_collection_scan(logged_store):
    """The explain reading below is not vacuous: a filter no index fits is reported as a scan."""
    store, _ = logged_store
    assert "COLLSCAN" in winning_stages(store.db, {"campaign": "x", "batch": "b", "seq": {"$gt": 1},
                                                   "status": {"$in": ["valid"]}})
    assert "IXSCAN" in winning_stages(store.db, {"campaign": "x", "batch": "b", "status": "valid"})


def test_every_query_of_the_cheap_and_ml_stages_is_index_backed(logged_store, spec, tmp_path):
    store, log = logged_store
    cp.load_references(store, DATA / "mp_Li-Co-Ni-O_5entries.json.gz", set_name="mp")
    name = spec["campaign"]
    batches = []
    for source in (DATA / "crystallm_pi_valid_41.parquet", DATA / "crystallm_pi_ml_rows.parquet"):
        batches += cp.run_ingest(store, source, spec)["batches"]
    for batch in batches:
        cp.run_validity(store, name, batch)
    planned = []
    for shard in range(spec["dedup_shards"]):
        planned += cp.run_uniqueness(store, name, shard)["ml_batches"]
    assert planned, "uniqueness planned no ML batch: the ML queries would go unchecked"
    # a band-gap-only ML batch (no relaxation: its systems have no references here) runs the ML stage's queries
    cheap = [b for b in planned if ".ml" in b and b.split(".ml")[0].endswith("n")]
    assert cheap, planned
    counts = cp.run_stability(store, name, cheap[0])
    assert sum(counts[s] for s in (st.ML_DONE, st.NO_REFERENCE, st.ML_FAILED)) > 0
    # what `fw-screen status`, `promote` and `recover` ask
    store.pending_batches(name)
    store.pending_ml_batches(name)
    store.unbatched_novel(name)
    store.status_counts(name)
    store.failure_counts(name)
    cp.ml_stage_finished(store, name)
    funnel.funnel_report(store, name)
    # the post-relaxation pass and `fw-screen metrics`
    cp.run_relaxed_uniqueness(store, name)
    from fw_screen.reporting.tables import campaign_metrics
    campaign_metrics(store, name)
    store.dft_waiting()
    store.dft_waiting("some-protocol")

    shapes: dict[str, tuple[str, dict]] = {}
    for command, flt in log.filters:
        shapes.setdefault(f"{command} {shape(flt)}", (command, flt))
    assert len(shapes) >= 10, sorted(shapes)
    scans = []
    for key, (_, flt) in sorted(shapes.items()):
        if "_id" in flt or not flt:
            assert flt, f"a query without a filter reads every candidate of every campaign: {key}"
            continue
        stages = winning_stages(store.db, flt)
        if "IXSCAN" not in stages or "COLLSCAN" in stages:
            scans.append(f"{key}: {stages}")
    assert not scans, "queries that read the whole collection:\n" + "\n".join(scans)
