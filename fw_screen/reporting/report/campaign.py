"""The ``campaign`` section: what the report is about — the campaign's name, creation and report times,
the input files, the candidates by status, and the spec thresholds every number below depends on.
"""

from __future__ import annotations

import datetime as dt

from fw_screen import state as st
from fw_screen.reporting.report.context import Context
from fw_screen.reporting.report.html import esc, when
from fw_screen.spec import CampaignSpec


def spec_thresholds(spec: CampaignSpec) -> list[tuple[str, object, str]]:
    """(spec key, value as shown, what it decides) of the spec settings the report's numbers depend on."""
    ml, prop, promo, dft = spec.ml, spec.property, spec.promotion, spec.dft
    return [
        ("validity.required", ", ".join(spec.validity.required), "checks a valid structure passes"),
        ("uniqueness", ", ".join(f"{k} {v}" for k, v in spec.uniqueness.items()),
         "StructureMatcher tolerances (duplicates, novelty)"),
        ("ml.potential", ml.potential, "universal potential of the ML relaxation"),
        ("ml.stability_threshold", f"{ml.stability_threshold} eV/atom", "S (ML-stable): ML e_above_hull ≤ this"),
        ("property.band_gap_model", f"{prop.band_gap_model} (fidelity {prop.band_gap_fidelity})",
         "ML band-gap model"),
        ("property.band_gap_tolerance", f"{prop.band_gap_tolerance} eV", "target hit: |ML gap − target| ≤ this"),
        ("promotion", f"ML e_above_hull ≤ {promo.max_e_above_hull} eV/atom, target hit required: "
                      f"{promo.require_target_hit}, converged: {promo.require_converged}, ≤ "
                      f"{promo.max_sites} sites, ≤ {promo.max_per_condition} per condition, ≤ "
                      f"{promo.max_total} in all", "which ML survivors go to DFT"),
        ("dft.code", str(dft.code) + (f" (k-points per reciprocal atom {dft.qe.kppa}, nscf {dft.qe.nscf_kppa})"
                                      if dft.code == "qe" else ""), "DFT code and protocol"),
        ("dft.stability_threshold", f"{dft.stability_threshold} eV/atom", "DFT-stable: DFT e_above_hull ≤ this"),
    ]


def fw_screen_version() -> str:
    """The installed fw-screen distribution's version, ``?`` when it is not installed as one."""
    try:
        from importlib.metadata import version

        return version("fw-screen")
    except Exception:  # noqa: BLE001 -- not installed as a distribution: say nothing
        return "?"


def section_campaign(ctx: Context) -> str:
    f = ctx.funnel
    fw_version = fw_screen_version()
    created = when(ctx.created) if isinstance(ctx.created, dt.datetime) else ctx.created
    inputs = ctx.cache["inputs"]
    rows = "".join(f"<tr><td>{esc(r['file'] if r['file'] is not None else '(no file name)')}</td>"
                   f"<td class='n'>{r['n']:,}</td><td class='n'>{r['submissions']}</td></tr>" for r in inputs)
    statuses = "".join(f"<tr><td>{esc(s)}</td><td class='n'>{ctx.counts[s]:,}</td></tr>"
                       for s in st.ORDER if ctx.counts.get(s))
    spec_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td><td class='muted'>{esc(m)}</td></tr>"
                        for k, v, m in spec_thresholds(ctx.spec))
    return (f"<dl class='meta'><dt>campaign</dt><dd>{esc(ctx.campaign)}</dd>"
            f"<dt>created</dt><dd>{esc(created)}</dd>"
            f"<dt>report generated</dt><dd>{esc(ctx.cache['generated'])}</dd>"
            f"<dt>inputs</dt><dd>{f['inputs']:,} CIFs</dd><dt>fw-screen</dt><dd>{esc(fw_version)}</dd></dl>"
            "<div class='cols'><div><h3>Inputs</h3><table class='small'><thead><tr><th>file</th><th>candidates</th>"
            f"<th>submissions</th></tr></thead><tbody>{rows}</tbody></table></div>"
            "<div><h3>Candidates by status</h3><table class='small'><thead><tr><th>status</th><th>n</th></tr></thead>"
            f"<tbody>{statuses}</tbody></table></div></div>"
            f"<h3>Spec: the thresholds behind the numbers</h3><table class='spec'><tbody>{spec_rows}</tbody></table>")
