"""Pure science: structures and dicts in, verdicts out.  No database, no FireWorks (tests/test_layout.py).
"""
