"""Compositional labels: logical formulas of concepts for each unit (issue 23).

:mod:`.search` (options, beam and exact search, results), :mod:`.run` (the passes over a
model's probe set), :mod:`.reference` (a plain mask-per-candidate reference, for checks and
``benchmarks/compose.py``); the counts are :mod:`dissect.stats.formula_counts`."""
