"""The ``metrics`` section: the ``fw-screen metrics`` table — every generation metric with its definition
and paper, overall and per condition (:func:`~fw_screen.reporting.tables.campaign_metrics`), and a note on
the reference distributions and the post-relaxation pass behind them.
"""

from __future__ import annotations

from fw_screen.reporting.report.context import Context
from fw_screen.reporting.report.html import code, cond_label, esc
from fw_screen.reporting.tables import campaign_metrics


def section_metrics(ctx: Context) -> str:
    """The ``fw-screen metrics`` table: every metric with its definition and paper, overall and per condition."""
    from fw_screen.science import metrics as mt

    m = campaign_metrics(ctx.store, ctx.campaign)
    conds = [("all conditions", "all", m["overall"])] + [
        (cond_label(c["condition"]), "none" if c["condition"] is None else repr(c["condition"]), c)
        for c in m["by_condition"]]
    head = ["metric", *[label for label, _, _ in conds], "definition", "source"]
    body = []
    for d in m["definitions"]:
        cells = [f"<th>{esc(d['name'])}</th>"]
        cells += [f"<td class='n' data-key='{esc(d['key'])}' data-condition='{esc(attr)}' "
                  f"data-value='{esc(repr(v.get(d['key'])))}'>{esc(mt.fmt(v.get(d['key']), d['key']))}</td>"
                  for _, attr, v in conds]
        cells += [f"<td class='reason'>{esc(d['definition'])}</td>", f"<td><small>{esc(d['source'])}</small></td>"]
        body.append("<tr>" + "".join(cells) + "</tr>")
    rp, ref = m["relaxed_pass"], m["reference"]
    note = (f"<p class='muted'>Reference distributions: {ref['structures']:,} structures of "
            f"{esc(', '.join(ref['sets']) or 'no reference set')}. After relaxation: {rp['checked']:,} of "
            f"{rp['relaxed']:,} ML-relaxed candidates matched again against the references and each other"
            + (f"; {rp['pending']:,} wait for the post-relaxation pass ({code('fw-screen promote ' + ctx.campaign)})"
               if rp["pending"] else "")
            + f". The same table: {code('fw-screen metrics ' + ctx.campaign)} (also {code('--json')}).</p>")
    return ("<div class='scroll'><table id='metrics' class='small'><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(body)
            + "</tbody></table></div>" + note)
