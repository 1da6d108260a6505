"""Promotion: which ML survivors are worth DFT (pure functions: candidate documents in, choices out).

Rules come from the spec's ``promotion`` section.  A candidate is eligible when its ML relaxation
converged, its ML energy above hull (relaxed) is at most ``max_e_above_hull``, its band gap hits the
generator's target (when it was given one and ``require_target_hit``; the gap is the DFT-lite one when the
rules' ``band_gap_source`` is ``dft_lite``, i.e. ``property.method: dft_lite``, else the ML one), its relaxed cell has at most
``max_sites`` sites, its chemical system has reference entries (``no_reference`` candidates never
reach ``ml_done``), and its relaxed structure is still novel and unique: one that relaxed onto a reference
structure (``ml.matched_reference_relaxed``) or onto another candidate lower above the hull
(``ml.duplicate_of_relaxed``) is passed over, with that reason.  Eligible candidates are ranked by ML e_above_hull within their band-gap condition;
at most ``max_per_condition`` per condition and ``max_total`` per campaign are chosen (both counting those
promoted in earlier rounds, so promoting again is idempotent).  Every choice carries the reason it was chosen, in words and numbers.
"""

from __future__ import annotations


def _sites(doc: dict) -> int | None:
    relaxed = (doc.get("ml") or {}).get("structure_relaxed") or {}
    return len(relaxed.get("sites") or []) or doc.get("nsites")


def _condition(doc: dict):
    return ((doc.get("targets") or {}).get("band_gap") or {}).get("value")


def relaxed_reason(doc: dict) -> str | None:
    """Why a candidate is no longer novel and unique after its ML relaxation, or None."""
    ml = doc.get("ml") or {}
    if ml.get("matched_reference_relaxed"):
        return f"relaxed onto known {ml['matched_reference_relaxed']}"
    if ml.get("duplicate_of_relaxed"):
        return f"relaxed duplicate of {ml['duplicate_of_relaxed']}"
    return None


def check(doc: dict, rules: dict) -> tuple[bool, list[str]]:
    """(eligible, reasons): the reasons it is not, or the rules it passed when it is."""
    ml = doc.get("ml") or {}
    passed, failed = [], []
    if (ml.get("relax") or {}).get("status") == "skipped":  # the pre-screen left it unrelaxed (ml.prescreen_e_hull)
        failed.append("not relaxed (ML pre-screen: unrelaxed e_above_hull above ml.prescreen_e_hull)")
    after = relaxed_reason(doc)
    if after:
        failed.append(after)
    elif "duplicate_of_relaxed" in ml:
        passed.append("novel and unique after relaxation")
    e_hull = ml.get("e_above_hull")
    if e_hull is None:
        failed.append("no ML energy above hull")
    elif e_hull <= rules["max_e_above_hull"]:
        passed.append(f"ML e_above_hull {e_hull:.3f} <= {rules['max_e_above_hull']} eV/atom")
    else:
        failed.append(f"ML e_above_hull {e_hull:.3f} > {rules['max_e_above_hull']} eV/atom")
    if rules["require_converged"]:
        status = (ml.get("relax") or {}).get("status")
        (passed if status == "converged" else failed).append(f"ML relaxation {status}")
    if rules["require_target_hit"] and _condition(doc) is not None:
        if rules.get("band_gap_source") == "dft_lite":
            lite = doc.get("dft_lite") or {}
            if lite.get("status") != "done":
                failed.append(f"no DFT-lite band gap ({lite.get('status') or 'not computed'}"
                              + (f": {lite['reason']}" if lite.get("reason") else "") + ")")
            else:
                hit = (lite.get("hits") or {}).get("band_gap") or {}
                gap = (lite.get("band_gap") or {}).get("band_gap")
                words = f"DFT-lite band gap {gap if gap is None else round(gap, 2)} eV vs target {_condition(doc)} eV"
                (passed if hit.get("hit") is True else failed).append(
                    words + (" (hit)" if hit.get("hit") else " (miss)"))
        else:
            hit = ((ml.get("hits") or {}).get("band_gap") or {})
            gap = (ml.get("band_gap") or {}).get("band_gap")
            words = f"ML band gap {gap if gap is None else round(gap, 2)} eV vs target {_condition(doc)} eV"
            (passed if hit.get("hit") is True else failed).append(words + (" (hit)" if hit.get("hit") else " (miss)"))
    n = _sites(doc)
    if n is None or n > rules["max_sites"]:
        failed.append(f"{n} sites > {rules['max_sites']}")
    else:
        passed.append(f"{n} sites <= {rules['max_sites']}")
    return (not failed, passed if not failed else failed)


def select(docs: list[dict], rules: dict, already_promoted: dict | None = None,
           references_ok=None) -> tuple[list[dict], dict]:
    """Choose candidates to promote from ``ml_done`` documents.

    ``already_promoted``: {condition: n} promoted in earlier rounds (they count toward
    ``max_per_condition``).  ``references_ok(doc) -> (ok, reason)``: can the DFT hull of this candidate be
    computed (reference phases with structures, small enough)?  Asked lazily, in rank order, only for
    candidates that would otherwise be chosen.  Returns (choices, summary): each choice is
    {"_id", "condition", "rank", "e_above_hull", "reason", "rules"}; the summary counts eligible candidates
    and the first reason of each ineligible one.
    """
    already = dict(already_promoted or {})
    eligible, rejected = [], {}
    for doc in docs:
        ok, reasons = check(doc, rules)
        if ok:
            eligible.append((doc, reasons))
        else:
            key = reasons[0].split(" ")[0:2]
            rejected[" ".join(key)] = rejected.get(" ".join(key), 0) + 1
    eligible.sort(key=lambda item: (item[0]["ml"]["e_above_hull"], item[0]["_id"]))
    choices, rank = [], {}
    earlier = sum(already.values())
    for doc, reasons in eligible:
        if earlier + len(choices) >= rules["max_total"]:
            break
        cond = _condition(doc)
        key = str(cond)
        if already.get(key, 0) >= rules["max_per_condition"]:
            continue
        if references_ok is not None:
            ok, why = references_ok(doc)
            if not ok:
                rejected["DFT references"] = rejected.get("DFT references", 0) + 1
                continue
            reasons = reasons + [why]
        already[key] = already.get(key, 0) + 1
        rank[key] = rank.get(key, 0) + 1
        choices.append({
            "_id": doc["_id"], "condition": cond, "rank": rank[key], "e_above_hull": doc["ml"]["e_above_hull"],
            "reason": "; ".join(reasons) + f"; rank {rank[key]} by ML e_above_hull in condition {cond}",
            "rules": dict(rules)})
    summary = {"considered": len(docs), "eligible": len(eligible), "chosen": len(choices),
               "not_eligible": rejected}
    return choices, summary
