"""Benchmarks: the scripts that produced every number in docs/ (results in benchmarks/results/).

Run one from the repository root as a module, e.g. ``.venv/bin/python -m benchmarks.aggregate``. (A plain
``python -m benchmarks.aggregate`` cannot work: opacus installs top-level ``benchmarks`` and ``examples``
packages of its own, which would shadow these.)
"""
