"""``python -m fw_screen.server.secantusd ARGS``: SecantusDB's ``secantusd-py ARGS``, with ``findAndModify`` made atomic.

SecantusDB 0.7.0b3 runs ``findAndModify`` as a find, then an update of the document it found; the update
re-checks the query under the collection's write lock, but the reply's pre-image (``new: false``, what
pymongo's ``find_one_and_update`` returns by default) is the one read *before* the lock.  Two clients
incrementing a counter whose query always matches (``{}``) are both given the same old value.  FireWorks
hands out Firework and Launch ids exactly that way (``LaunchPad.get_new_fw_id`` / ``get_new_launch_id``),
so two launchers checking out Fireworks at the same moment can get one launch id: the second Launch
document replaces the first, and the completion of either launch updates both Fireworks.  Measured with
4 threads x 200 ``find_one_and_update({}, {"$inc": ...})``: 486 distinct values of 800 on ``secantusd-py``
(tests/test_server.py::test_find_and_modify_hands_out_each_counter_value_once).

The fix: hold the collection's lock (a re-entrant lock SecantusDB's own writes take first, so the lock
order is unchanged) for the whole command, so the document read is the one written.  MongoDB proper is
atomic here; this matters only for the embedded server, which :mod:`fw_screen.server.embedded` starts through
this module.
"""

from __future__ import annotations

import functools
import sys


def _atomic(impl):
    @functools.wraps(impl)
    def find_and_modify(doc, ctx):
        coll = doc.get("findAndModify", doc.get("findandmodify"))
        if not isinstance(coll, str) or not coll:
            return impl(doc, ctx)  # malformed: let SecantusDB answer with its own error
        with ctx.storage._coll_lock(ctx.db_name, coll):
            return impl(doc, ctx)

    find_and_modify.fw_screen_atomic = True
    return find_and_modify


def patch() -> bool:
    """Make ``findAndModify`` atomic in this process's SecantusDB (idempotent).  False, with a warning on
    stderr, when this SecantusDB is not laid out as 0.7 is (the server then runs as ``secantusd-py`` would;
    tests/test_server.py says whether its findAndModify is atomic)."""
    from secantus import commands, storage

    impl = getattr(commands, "_find_and_modify_impl", None)
    if impl is None or not hasattr(getattr(storage, "Storage", object), "_coll_lock"):
        print("fw_screen.server.secantusd: this SecantusDB has no _find_and_modify_impl / Storage._coll_lock; "
              "findAndModify left as it is", file=sys.stderr)
        return False
    if not getattr(impl, "fw_screen_atomic", False):
        # ``_find_and_modify`` (the dispatch table's entry) looks the implementation up at call time
        commands._find_and_modify_impl = _atomic(impl)
    return True


def main(argv: list[str] | None = None) -> int:
    from secantus.cli import main as secantus_main

    patch()
    return secantus_main(argv)


if __name__ == "__main__":
    sys.exit(main())
