"""Experiments: dissection (which concept each unit detects) and interventions (what units do).

:mod:`~dissect.experiments.dissection` tallies and labels the units and
:mod:`~dissect.experiments.strips` draws them; :mod:`~dissect.experiments.runner` is the
shared "activations once, the rest of the network many times" base of the classifier
ablation (:mod:`~dissect.experiments.ablation`, scored by :mod:`~dissect.experiments.metrics`,
with the adversarial view in :mod:`~dissect.experiments.attack`) and the generator
interventions (:mod:`~dissect.experiments.generator`).
"""
