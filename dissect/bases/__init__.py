"""Feature bases of a layer: learned dictionaries (SAE, PCA, NMF) and a random rotation,
dissected beside the layer's units (docs/bases.md).

:mod:`.options` holds the options and their CLI group, :mod:`.dictionary` the dictionaries
and their fits, :mod:`.features` their dissection and comparison, :mod:`.report` the
results' ``bases`` section.
"""
