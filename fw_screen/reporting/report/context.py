"""What the report's sections share: the :class:`Context` each section reads (store, campaign, spec, status
counts, options), the :class:`Section` each becomes, the :class:`Skip` a section without data raises, and
the queries more than one section uses, run once and cached on the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fw_screen import state as st
from fw_screen.reporting.report.html import cond_sort, esc
from fw_screen.reporting.tables import AnalysisError, funnel_yields, ml_vs_dft, require_campaign
from fw_screen.spec import CampaignSpec
from fw_screen.store import ResultsStore


@dataclass
class Section:
    key: str
    body: str = ""
    drawn: bool = True
    reason: str | None = None  # why it was skipped
    seconds: float = 0.0


@dataclass
class Context:
    store: ResultsStore
    campaign: str
    spec: CampaignSpec
    created: object
    counts: dict
    funnel: dict
    top: int
    chemical_space: bool
    max_per_group: int
    cache: dict = field(default_factory=dict)

    @property
    def ml_threshold(self) -> float:
        return float(self.spec.ml.stability_threshold)

    @property
    def tolerance(self) -> float:
        return float(self.spec.property.band_gap_tolerance)

    @property
    def dft_threshold(self) -> float:
        return float(self.spec.dft.stability_threshold)


class Skip(Exception):
    """A section has nothing to draw: the message (HTML) says which stage is missing and what produces it."""

    def __init__(self, reason: str, note_html: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.note_html = note_html if note_html is not None else esc(reason)


def make_context(store: ResultsStore, campaign: str, **options) -> Context:
    """The context of a report on ``campaign`` (its spec, status counts and input files, read once);
    an unknown campaign or one without candidates raises :class:`~fw_screen.reporting.tables.AnalysisError`."""
    require_campaign(store, campaign)
    info = store.campaign_info(campaign)
    overview = store.campaign_overview(campaign)  # statuses and input files in one pass
    counts = overview["status"]
    if not counts:
        raise AnalysisError(f"campaign {campaign!r} has no candidates yet: nothing to report (submit inputs with "
                            f"`fw-screen submit INPUT --campaign {campaign}`)")
    return Context(store=store, campaign=campaign, spec=info["spec"], created=info.get("created"), counts=counts,
                   funnel=st.funnel(counts), cache={"inputs": overview["inputs"]}, **options)


def ml_values(ctx: Context) -> list[dict]:
    """ML e_above_hull, band gap and target hit of the novel-or-later candidates, per condition (one
    aggregation, shared by the e_hull and band-gap sections)."""
    if "ml_values" not in ctx.cache:
        ctx.cache["ml_values"] = cond_sort(ctx.store.values_by_condition(
            ctx.campaign, {"e": "ml.e_above_hull", "gap": "ml.band_gap.band_gap", "hit": "ml.hits.band_gap.hit"},
            statuses=st.NOVEL_OR_LATER))
    return ctx.cache["ml_values"]


def ml_against_dft(ctx: Context) -> dict:
    """:func:`fw_screen.reporting.tables.ml_vs_dft` of the campaign (parity section; its rows, the DFT-done
    candidates by DFT e_above_hull, head the candidates table)."""
    if "ml_vs_dft" not in ctx.cache:
        ctx.cache["ml_vs_dft"] = ml_vs_dft(ctx.store, ctx.campaign)
    return ctx.cache["ml_vs_dft"]


def yields(ctx: Context) -> dict:
    """:func:`fw_screen.reporting.tables.funnel_yields` of the campaign."""
    if "yields" not in ctx.cache:
        ctx.cache["yields"] = funnel_yields(ctx.store, ctx.campaign)
    return ctx.cache["yields"]
