"""Text helpers of the campaign report: HTML escaping and the way numbers, rates, conditions, yes/no flags,
times and file names are written.  Every section module builds on these; nothing here knows about a
campaign, the database or matplotlib.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re

import numpy as np


def esc(value) -> str:
    """Text for HTML (every string from the database or the spec goes through this)."""
    return html.escape("" if value is None else str(value), quote=True)


def num(x, fmt: str = ".3f", signed: bool = False) -> str:
    """A finite number in ``fmt`` (``+`` in front when ``signed``); ``–`` for anything else."""
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return format(x, ("+" if signed else "") + fmt)


def pct(rate) -> str:
    """A rate (0..1) as a percentage with one decimal; ``–`` for none."""
    return "–" if rate is None else f"{100 * rate:.1f}%"


def cond_label(c) -> str:
    """A band-gap condition (the generator's target, eV) as a label."""
    return "no target" if c is None else f"{c:g} eV"


def cond_sort(rows: list[dict], key: str = "condition") -> list[dict]:
    """Rows by condition, the rows without a target last."""
    return sorted(rows, key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0.0))


def code(text: str) -> str:
    """``<code>`` around escaped text (a command to run)."""
    return f"<code>{esc(text)}</code>"


def yes_no(v) -> str:
    """A flag as a green tick, a red cross or a grey dash (unknown)."""
    if v is None:
        return '<span class="na">–</span>'
    return '<span class="yes">✓</span>' if v else '<span class="no">✗</span>'


def finite(values) -> np.ndarray:
    """The finite numbers among ``values`` (booleans and non-numbers dropped) as a float array."""
    a = np.array([v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)], dtype=float)
    return a[np.isfinite(a)]


def when(t: dt.datetime) -> str:
    """A time as ``2026-11-30 03:48:27 UTC`` (MongoDB returns naive datetimes in UTC)."""
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def safe_name(text: str) -> str:
    """``text`` as a file name: characters unsafe in one become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "campaign"
