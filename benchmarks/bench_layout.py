"""The shape of the package, measured from its source: lines per module, the longest functions, import circles
and private names imported across modules -- for this tree and, with ``--against REV``, for an older commit
side by side (checked out into a temporary git worktree; nothing is imported or run), and the reads of the
campaign spec by string key rather than typed attribute.

    python benchmarks/bench_layout.py [--against 2c57120] [--top 12] [--json results/layout.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: a read of the whole campaign spec by string key (``spec["ml"]``, ``spec.get("ml")``,
#: ``store.campaign_spec(c)["ml"]``), the pattern tests/test_layout.py forbids
SPEC_KEY_READ = re.compile(r"(?<![\w.])(?:spec|self\.spec|ctx\.spec)(?:\[[\"']|\.get\()|campaign_spec\([^()]*\)\[")


def measure(root: Path, top: int) -> dict:
    pkg = root / "fw_screen"
    mods = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(pkg.rglob("*.py"))}
    lines, funcs, edges, private, spec_keys = {}, [], {m: set() for m in mods}, [], 0
    for m, p in mods.items():
        text = p.read_text()
        lines[m] = text.count("\n")
        if not m.endswith(".spec"):
            spec_keys += len(SPEC_KEY_READ.findall(text))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{m}.{node.name}"))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fw_screen"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    target = full if full in mods else node.module
                    if target != m and not m.startswith(target + "."):
                        edges[m].add(target)
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.append(f"{m} <- {full}")
    funcs.sort(reverse=True)
    return {"modules": len(mods), "lines": sum(lines.values()),
            "largest_modules": sorted(lines.items(), key=lambda kv: -kv[1])[:top],
            "modules_over_500_lines": sum(v > 500 for v in lines.values()),
            "longest_functions": funcs[:top], "functions_over_80_lines": sum(n > 80 for n, _ in funcs),
            "circles": circles(edges), "private_imports": private, "spec_string_key_reads": spec_keys}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w in edges and w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def show(label: str, r: dict) -> str:
    out = [f"== {label}: {r['modules']} modules, {r['lines']} lines; {r['modules_over_500_lines']} modules over 500 "
           f"lines, {r['functions_over_80_lines']} functions over 80 lines; {len(r['circles'])} import circles; "
           f"{len(r['private_imports'])} private names imported across modules; "
           f"{r.get('spec_string_key_reads', '-')} string-key reads of the campaign spec"]
    out.append("  largest modules: " + ", ".join(f"{m} {n}" for m, n in r["largest_modules"]))
    out.append("  longest functions: " + ", ".join(f"{f} {n}" for n, f in r["longest_functions"]))
    for c in r["circles"]:
        out.append("  circle: " + " -> ".join(c))
    for p in r["private_imports"]:
        out.append("  private: " + p)
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", help="an older commit to measure beside this tree")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    result = {"this tree": measure(ROOT, args.top)}
    if args.against:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", tmp, args.against], check=True)
            try:
                result[args.against] = measure(Path(tmp), args.top)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp], check=True)
    for label in reversed(list(result)):
        print(show(label, result[label]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
