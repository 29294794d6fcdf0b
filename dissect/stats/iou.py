"""Streaming IoU tallies between unit masks and concept labels (METHOD.md section 1).

Counts, tallied over the probe set (all mergeable sums):

* ``inter[k, c]``  pixels where unit k is on and concept c is present;
* ``unit_cat[k, g]`` unit-on pixels in images annotated in category g, where (as the
  original NetDissect code counts it) an image is annotated in g when it holds at least one
  pixel, or a whole-image label, of some concept whose *primary* category is g (for a
  probe set labeled by a segmenter, ``all_annotated``: every image, so the IoU is the plain
  IoU over all images, as in the 2020 paper);
* ``label_pixels[c]`` pixels of concept c (a whole-image label covers every pixel);
* ``active[k]`` unit-on pixels over all images, and ``pixels`` the pixel total.

``IoU[k, c] = inter / (unit_cat[k, cat(c)] + label_pixels[c] - inter)``.

A batch's labels are prepared once (:meth:`IoUTally.prepare`) and shared by every layer's
tally; unit masks come in sparse form, as the (image, unit) pairs whose mask is not empty,
since at a top-quantile threshold most maps have no pixel on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LabelBatch:
    """One batch's labels, prepared once for all layers."""

    pixel: torch.Tensor        # long [B, layers, H*W], a concept at most once per pixel
    image: torch.Tensor        # long [B, J], whole-image labels, a concept at most once per image
    has_cat: torch.Tensor      # float64 [B, categories]
    label_pixels: torch.Tensor  # float64 [labels]
    hw: int
    image_label_pixels: torch.Tensor  # float64 [B, labels]: label_pixels per image

    def rows(self, s: slice) -> "LabelBatch":
        """The labels of images ``s`` of the batch (itself when ``s`` covers them all): a
        batch tallied in parts (:class:`dissect.memory.Parts`) gives the same sums."""
        b = self.pixel.shape[0]
        if s.start in (0, None) and (s.stop is None or s.stop >= b):
            return self
        per_image = self.image_label_pixels[s]
        return LabelBatch(self.pixel[s], self.image[s], self.has_cat[s], per_image.sum(dim=0), self.hw, per_image)


class IoUTally:
    def __init__(self, num_units: int, num_labels: int, primary_category: torch.Tensor,
                 num_categories: int, device: torch.device | str = "cpu",
                 all_annotated: bool = False):
        """``num_labels`` counts label numbers including 0 (none); ``primary_category[c]``
        is the category index of label c (entry 0 ignored). ``all_annotated``: every image is
        annotated in every category (a segmenter labeled them), so ``unit_cat`` counts every
        image and the IoU is the plain IoU over all images."""
        self.device = torch.device(device)
        self.all_annotated = all_annotated
        self.num_units = num_units
        self.num_labels = num_labels
        self.num_categories = num_categories
        self.primary_category = primary_category.to(self.device, torch.long)
        z = lambda *s: torch.zeros(s, dtype=torch.float64, device=self.device)  # noqa: E731
        self.inter = z(num_units, num_labels)
        self.unit_cat = z(num_units, num_categories)
        self.label_pixels = z(num_labels)
        self.active = z(num_units)
        self.pixels = 0
        self.images = 0

    # ------------------------------------------------------------------ labels
    def prepare(self, pixel_labels: torch.Tensor, image_labels: torch.Tensor) -> LabelBatch:
        """pixel_labels: long ``[B, layers, H, W]`` (0 none); image_labels: long ``[B, J]``."""
        return prepare_labels(pixel_labels.to(self.device), image_labels.to(self.device),
                              self.num_labels, self.primary_category, self.num_categories,
                              self.all_annotated)

    # ------------------------------------------------------------------ tallying
    def add(self, masks: torch.Tensor, pixel_labels: torch.Tensor,
            image_labels: torch.Tensor) -> None:
        """Tally dense masks: bool ``[B, units, H, W]``."""
        masks = masks.to(self.device)
        labels = self.prepare(pixel_labels, image_labels)
        b, u = masks.flatten(2).any(dim=2).nonzero(as_tuple=True)
        self.add_sparse(b, u, masks[b, u], labels)

    def add_sparse(self, img: torch.Tensor, unit: torch.Tensor, masks: torch.Tensor,
                   labels: LabelBatch) -> None:
        """Tally a batch given the non-empty masks only: ``masks[m]`` (bool ``[H, W]``) is
        unit ``unit[m]`` on image ``img[m]``; every other (image, unit) mask is empty.

        Everything is computed before the tally changes, so that a call that fails (out of
        device memory) leaves it as it was and can be retried on smaller parts."""
        dev = self.device
        nb = labels.pixel.shape[0]
        nl = self.num_labels
        units = self.num_units
        act = inter = None
        if img.numel():
            flat = masks.reshape(masks.shape[0], -1)
            nlayers = labels.pixel.shape[1]
            if nlayers:   # the on-pixels, which the pixel labels need anyway, count each mask
                m, p = flat.nonzero(as_tuple=True)
                counts = torch.bincount(m, minlength=flat.shape[0]).to(torch.float64)   # [M]
            else:
                counts = flat.view(torch.uint8).sum(dim=1, dtype=torch.int32).to(torch.float64)
            act = torch.zeros((nb, units), dtype=torch.float64, device=dev)
            act.index_put_((img, unit), counts, accumulate=True)
            # pixel labels: look up the labels under every on-pixel, all layers at once
            if nlayers:
                base = img[m] * (nlayers * labels.hw) + p                       # [N]
                offsets = torch.arange(nlayers, device=dev) * labels.hw
                lab = torch.take(labels.pixel, base.unsqueeze(1) + offsets)     # [N, layers]
                key = (unit[m].unsqueeze(1) * nl + lab)[lab > 0]
                inter = torch.bincount(key, minlength=units * nl).view(units, nl).to(torch.float64)
            else:
                inter = torch.zeros((units, nl), dtype=torch.float64, device=dev)
            # whole-image labels: every on-pixel of the image
            for j in range(labels.image.shape[1]):
                lab = labels.image[:, j]
                keep = lab > 0
                if keep.any():
                    inter.index_add_(1, lab[keep], act[keep].t())
            unit_cat = act.t() @ labels.has_cat
        # (sums of whole numbers in float64: exact in any order, so parts give the same tally)
        self.pixels += nb * labels.hw
        self.images += nb
        self.label_pixels += labels.label_pixels
        if act is not None:
            self.active += act.sum(dim=0)
            self.unit_cat += unit_cat
            self.inter += inter

    # ------------------------------------------------------------------ results
    def merge(self, other: "IoUTally") -> None:
        for name in ("inter", "unit_cat", "label_pixels", "active"):
            getattr(self, name).add_(getattr(other, name).to(self.device))
        self.pixels += other.pixels
        self.images += other.images

    def iou(self) -> torch.Tensor:
        """``[units, labels]`` IoU (0 where the union is empty; column 0 is 0)."""
        ucat = self.unit_cat[:, self.primary_category]                 # [units, labels]
        union = ucat + self.label_pixels.view(1, -1) - self.inter
        out = torch.where(union > 0, self.inter / union.clamp(min=1), torch.zeros_like(union))
        out[:, 0] = 0
        return out

    def state_dict(self) -> dict:
        return {"inter": self.inter.cpu(), "unit_cat": self.unit_cat.cpu(),
                "label_pixels": self.label_pixels.cpu(), "active": self.active.cpu(),
                "pixels": self.pixels, "images": self.images}

    def load_state_dict(self, state: dict) -> None:
        for name in ("inter", "unit_cat", "label_pixels", "active"):
            setattr(self, name, state[name].to(self.device, torch.float64))
        self.pixels = int(state["pixels"])
        self.images = int(state["images"])


def prepare_labels(pixel_labels: torch.Tensor, image_labels: torch.Tensor, num_labels: int,
                   primary_category: torch.Tensor, num_categories: int,
                   all_annotated: bool = False) -> LabelBatch:
    dev = pixel_labels.device
    pixel_labels = _dedupe(pixel_labels.long().flatten(2)).contiguous()    # [B, layers, HW]
    image_labels = _dedupe(image_labels.long().unsqueeze(2)).squeeze(2)    # [B, J]
    b = pixel_labels.shape[0]
    hw = pixel_labels.shape[2] if pixel_labels.dim() == 3 else 0
    nl = num_labels
    present = torch.zeros((b, nl), dtype=torch.bool, device=dev)
    if pixel_labels.numel():
        present.scatter_(1, pixel_labels.flatten(1), True)
    if image_labels.numel():
        present.scatter_(1, image_labels, True)
    present[:, 0] = False
    cat_onehot = torch.zeros((nl, num_categories), dtype=torch.float64, device=dev)
    cat_onehot[torch.arange(1, nl, device=dev), primary_category[1:]] = 1.0
    has_cat = ((present.to(torch.float64) @ cat_onehot) > 0).to(torch.float64)
    if all_annotated:
        has_cat.fill_(1.0)
    per_image = torch.zeros((b, nl), dtype=torch.float64, device=dev)   # each image's pixels of each label
    rows = torch.arange(b, device=dev).view(b, 1) * nl
    if pixel_labels.numel():
        key = (rows.unsqueeze(2) + pixel_labels).flatten()
        per_image += torch.bincount(key, minlength=b * nl)[:b * nl].view(b, nl).to(torch.float64)
    if image_labels.numel():
        key = (rows + image_labels).flatten()
        per_image += torch.bincount(key, minlength=b * nl)[:b * nl].view(b, nl).to(torch.float64) * hw
    per_image[:, 0] = 0
    return LabelBatch(pixel_labels, image_labels, has_cat, per_image.sum(dim=0), hw, per_image)


def _dedupe(labels: torch.Tensor) -> torch.Tensor:
    """``labels``: ``[B, layers, N]``. Zero a label in a layer when an earlier layer holds the
    same label at the same place, so a pixel (or image) counts once per concept. Layers whose
    label sets are disjoint (the usual case: one category each) are not compared."""
    n = labels.shape[1]
    if n < 2:
        return labels
    top = int(labels.max()) + 1 if labels.numel() else 1
    sets = [torch.bincount(labels[:, i].flatten(), minlength=top)[1:] > 0 for i in range(n)]
    out = labels
    for i in range(1, n):
        for j in range(i):
            if (sets[i] & sets[j]).any():
                if out is labels:
                    out = labels.clone()
                dup = out[:, j] == out[:, i]
                out[:, i][dup] = 0
    return out


def concept_counts(img: torch.Tensor, unit: torch.Tensor, masks: torch.Tensor, labels: LabelBatch,
                   concepts: torch.Tensor, primary_category: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and unit, the intersection and union pixels of unit ``k`` with the one concept
    ``concepts[k]`` (-1: none, counts 0), float64 ``[B, units]`` each: the terms of
    :class:`IoUTally`'s sums for that concept, counted by the same rules (the unit's on-pixels
    count in the union when the image is annotated in the concept's category; a whole-image
    label covers every pixel), so that summed over the images they give its ``inter`` and
    ``unit_cat + label_pixels - inter``. The masks come as in :meth:`IoUTally.add_sparse`."""
    dev = labels.pixel.device
    nb, nlayers, hw = labels.pixel.shape[0], labels.pixel.shape[1], labels.hw
    units = concepts.numel()
    has = concepts >= 0
    c = concepts.clamp(min=0).to(dev)                                               # [units]
    label_pixels = labels.image_label_pixels[:, c]                                  # [B, units]
    on = torch.zeros((nb, units), dtype=torch.float64, device=dev)
    inter = torch.zeros((nb, units), dtype=torch.float64, device=dev)
    if img.numel():
        flat = masks.reshape(masks.shape[0], -1)
        cm = c[unit]                                                                 # [M]
        if nlayers:
            m, p = flat.nonzero(as_tuple=True)
            counts = torch.bincount(m, minlength=flat.shape[0]).to(torch.float64)
            offsets = torch.arange(nlayers, device=dev) * hw
            lab = torch.take(labels.pixel, (img[m] * (nlayers * hw) + p).unsqueeze(1) + offsets)
            hit = ((lab == cm[m].unsqueeze(1)) & (lab > 0)).sum(dim=1).to(torch.float64)
            hits = torch.zeros(flat.shape[0], dtype=torch.float64, device=dev).index_add_(0, m, hit)
        else:
            counts = flat.view(torch.uint8).sum(dim=1, dtype=torch.int32).to(torch.float64)
            hits = torch.zeros_like(counts)
        for j in range(labels.image.shape[1]):
            whole = labels.image[img, j]
            hits += counts * ((whole == cm) & (whole > 0)).to(torch.float64)
        on.index_put_((img, unit), counts, accumulate=True)
        inter.index_put_((img, unit), hits, accumulate=True)
    annotated = labels.has_cat[:, primary_category.to(dev)[c]]                       # [B, units]
    union = on * annotated + label_pixels - inter
    keep = has.to(dev).view(1, -1).to(torch.float64)
    return inter * keep, union * keep
