"""Training the shipped toy models from scratch (``dissect train ...``).

:mod:`~dissect.training.classifier` (``toy-classifier``), :mod:`~dissect.training.segmenter`
(``toy-segmenter``) and :mod:`~dissect.training.generator` (``toy-generator``, with the
discriminator, which is not shipped). Each writes safetensors weights beside a JSON record.
"""
