"""Fault injection with real processes: does every run execute at most once and end, whatever breaks?

`./dev chaos` runs the full form (`python -m tests.chaos`) and prints one row per fault; CHAOS.md holds the
results. `test_chaos.py` runs the quick form inside `./dev test`.
"""
