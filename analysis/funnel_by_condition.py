"""Funnel yields per generation condition, straight from MongoDB (one aggregation).

    python analysis/funnel_by_condition.py -c demo [-l .fw-screen/launchpad.yaml] [--field targets.band_gap.value]
"""

from __future__ import annotations

import argparse

from fw_screen import status as st


def funnel_by(store, campaign: str, field: str = "targets.band_gap.value") -> list[dict]:
    rows = []
    for value, counts in sorted(store.status_counts_by(campaign, field).items(),
                                key=lambda kv: (kv[0] is None, kv[0])):
        f = st.funnel(counts)
        rows.append({"condition": value, **{k: f[k] for k in ("inputs", "valid", "unique", "novel")},
                     "V": f["valid"] / f["inputs"] if f["inputs"] else None,
                     "VUN": f["novel"] / f["inputs"] if f["inputs"] else None})
    return rows


def main(argv=None) -> int:
    from fw_screen.cli import _store, resolve_launchpad

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-c", "--campaign", required=True)
    p.add_argument("-l", "--launchpad")
    p.add_argument("--field", default="targets.band_gap.value")
    args = p.parse_args(argv)
    rows = funnel_by(_store(resolve_launchpad(args.launchpad)), args.campaign, args.field)
    if not rows:
        print(f"campaign {args.campaign!r} has no candidates")
        return 0
    print(f"{args.field:>28} {'inputs':>7} {'valid':>6} {'unique':>6} {'novel':>6} {'V':>6} {'VUN':>6}")
    for r in rows:
        print(f"{r['condition']!s:>28} {r['inputs']:>7} {r['valid']:>6} {r['unique']:>6} {r['novel']:>6} "
              f"{100 * r['V']:>5.1f}% {100 * r['VUN']:>5.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
