"""Labelers other than IoU: each in its own module.

:mod:`dissect.labelers.clip`: open-vocabulary labels from a word list and a CLIP model
(CLIP-Dissect's SoftWPMI, :mod:`dissect.stats.softwpmi`), beside the IoU labels.
"""
