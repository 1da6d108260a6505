"""The report page around the sections: their order (:data:`SECTIONS`), titles and anchors, the inline
CSS, and the HTML document — header, table of contents, one ``<section>`` each, the timings footer.
"""

from __future__ import annotations

from fw_screen.reporting.report.context import Context, Section
from fw_screen.reporting.report.html import esc

#: section keys, in the order they appear (the summary and the progress bar use them)
SECTIONS = ("campaign", "funnel", "metrics", "e_hull", "band_gap", "parity", "phase_diagrams", "chemical_space", "candidates")
TITLES = {"campaign": "Campaign", "funnel": "Funnel and yields",
          "metrics": "Generation metrics, as the papers define them", "e_hull": "ML energy above hull per condition",
          "band_gap": "ML band gap against the target", "parity": "ML against DFT",
          "phase_diagrams": "DFT phase diagrams", "chemical_space": "Chemical space",
          "candidates": "Top candidates"}
ANCHORS = {k: k.replace("_", "-") for k in SECTIONS}

CSS = """
:root { --fg:#1d2330; --muted:#5b6473; --line:#d9dde3; --bg:#ffffff; --panel:#f6f7f9; --accent:#2b5fab; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 14px/1.45 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
nav ol { margin: 8px 0 0; padding-left: 22px; columns: 2; }
nav a, a { color: var(--accent); }
.sub { color: var(--muted); margin: 0 0 10px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 10px 0; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; font-weight: 600; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; vertical-align: top; text-align: left; }
thead th { background: var(--panel); }
tbody tr:nth-child(even) { background: #fafbfc; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.c { text-align: center; white-space: nowrap; }
td small { display: block; color: var(--muted); font-size: 11px; }
td.id { font-family: "DejaVu Sans Mono", monospace; font-size: 11px; white-space: nowrap; }
td.reason { min-width: 120px; max-width: 220px; font-size: 11.5px; color: var(--muted); }
table.candidates { font-size: 12px; }
table.candidates th, table.candidates td { padding: 3px 5px; }
table.spec th { background: var(--panel); white-space: nowrap; font-weight: 600; }
table.small { font-size: 12.5px; }
.muted { color: var(--muted); font-size: 12.5px; }
.scroll { overflow-x: auto; max-width: 100%; }
.cols { display: flex; flex-wrap: wrap; gap: 8px 36px; align-items: flex-start; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 16px 24px; }
figure { margin: 8px 0 12px; }
figcaption { color: var(--muted); font-size: 12.5px; max-width: 980px; margin-top: 4px; }
img.plot { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); background: #fff; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; margin: 8px 0; max-width: 980px; }
section.skipped .note { background: #eef3fb; border-left-color: #7a9cd3; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 12.5px; background: #eef0f3; padding: 1px 4px;
       border-radius: 3px; }
.yes { color: #1e8a3a; font-weight: 700; } .no { color: #b3261e; font-weight: 700; } .na { color: #9aa1ab; }
.status { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11.5px; background: #e9ecf1;
          white-space: nowrap; }
.s-dft_done { background: #d7f0dc; } .s-promoted { background: #fdf0c9; } .s-dft_failed, .s-ml_failed { background: #f8d9d6; }
a.cif { font-weight: 600; text-decoration: none; border: 1px solid var(--accent); border-radius: 4px; padding: 0 5px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
"""


def render_page(ctx: Context, sections: list[Section], seconds: float) -> str:
    """The whole HTML document of the drawn and skipped ``sections``, built in ``seconds``."""
    nav = "".join(f"<li><a href='#{ANCHORS[s.key]}'>{esc(TITLES[s.key])}</a>"
                  + ("" if s.drawn else " <span class='muted'>(no data)</span>") + "</li>" for s in sections)
    body = ""
    for i, s in enumerate(sections, 1):
        state = "drawn" if s.drawn else "skipped"
        body += (f"<section id='{ANCHORS[s.key]}' class='{state}' data-section='{s.key}' data-state='{state}'>"
                 f"<h2>{i}. {esc(TITLES[s.key])}</h2>{s.body}</section>\n")
    timings = ", ".join(f"{s.key} {s.seconds:.1f} s" for s in sections)
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>fw-screen report: {esc(ctx.campaign)}</title><style>{CSS}</style></head>\n<body><main>"
            f"<h1>fw-screen campaign report: {esc(ctx.campaign)}</h1>"
            f"<p class='sub'>Generated {esc(ctx.cache['generated'])} from the fw-screen database. Self-contained: "
            "plots and CIFs are embedded; it opens offline.</p>"
            f"<nav><ol>{nav}</ol></nav>\n{body}"
            f"<footer>Built in {seconds:.1f} s ({esc(timings)}).</footer></main></body></html>\n")
