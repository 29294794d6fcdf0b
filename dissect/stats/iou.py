"""Streaming IoU tallies between unit masks and concept labels (METHOD.md section 1).

Counts, tallied over the probe set (all mergeable sums):

* ``inter[k, c]``  pixels where unit k is on and concept c is present;
* ``unit_cat[k, g]`` unit-on pixels in images annotated in category g, where (as the
  original NetDissect code counts it) an image is annotated in g when it holds at least one
  pixel, or a whole-image label, of some concept whose *primary* category is g;
* ``label_pixels[c]`` pixels of concept c (a whole-image label covers every pixel);
* ``active[k]`` unit-on pixels over all images, and ``pixels`` the pixel total.

``IoU[k, c] = inter / (unit_cat[k, cat(c)] + label_pixels[c] - inter)``.
"""

from __future__ import annotations

import torch


class IoUTally:
    def __init__(self, num_units: int, num_labels: int, primary_category: torch.Tensor,
                 num_categories: int, device: torch.device | str = "cpu"):
        """``num_labels`` counts label numbers including 0 (none); ``primary_category[c]``
        is the category index of label c (entry 0 ignored)."""
        self.device = torch.device(device)
        self.num_units = num_units
        self.num_labels = num_labels
        self.num_categories = num_categories
        self.primary_category = primary_category.to(self.device, torch.long)
        self._cat_onehot = torch.zeros((num_labels, num_categories), dtype=torch.float64,
                                       device=self.device)
        self._cat_onehot[torch.arange(1, num_labels, device=self.device),
                         self.primary_category[1:]] = 1.0
        z = lambda *s: torch.zeros(s, dtype=torch.float64, device=self.device)  # noqa: E731
        self.inter = z(num_units, num_labels)
        self.unit_cat = z(num_units, num_categories)
        self.label_pixels = z(num_labels)
        self.active = z(num_units)
        self.pixels = 0
        self.images = 0

    def add(self, masks: torch.Tensor, pixel_labels: torch.Tensor,
            image_labels: torch.Tensor) -> None:
        """Tally one batch.

        masks: bool ``[B, units, H, W]`` (unit on);
        pixel_labels: long ``[B, layers, H, W]`` label numbers (0 none);
        image_labels: long ``[B, J]`` whole-image label numbers (0 padding).
        """
        dev = self.device
        masks = masks.to(dev)
        pixel_labels = _dedupe_layers(pixel_labels.to(dev, torch.long))
        image_labels = _dedupe_image_labels(image_labels.to(dev, torch.long))
        b, units, h, w = masks.shape
        hw = h * w
        nl = self.num_labels

        act = masks.flatten(2).sum(dim=2).to(torch.float64)              # [B, units]
        self.active += act.sum(dim=0)
        self.pixels += b * hw
        self.images += b

        # which labels each image holds -> which categories it is annotated in
        present = torch.zeros((b, nl), dtype=torch.float64, device=dev)
        if pixel_labels.numel():
            present.scatter_(1, pixel_labels.flatten(1), 1.0)
        if image_labels.numel():
            present.scatter_(1, image_labels, 1.0)
        present[:, 0] = 0
        has_cat = (present @ self._cat_onehot) > 0                      # [B, cats]
        self.unit_cat += act.t() @ has_cat.to(torch.float64)

        # label pixel counts
        if pixel_labels.numel():
            self.label_pixels += torch.bincount(pixel_labels.flatten(), minlength=nl)[:nl].to(torch.float64)
        if image_labels.numel():
            self.label_pixels += torch.bincount(image_labels.flatten(), minlength=nl)[:nl].to(torch.float64) * hw
        self.label_pixels[0] = 0

        # intersections with pixel labels: only where the unit is on (a small fraction)
        if pixel_labels.numel():
            bi, ui, pi = masks.flatten(2).nonzero(as_tuple=True)
            if bi.numel():
                flat = pixel_labels.flatten(2)                            # [B, layers, HW]
                for layer in range(flat.shape[1]):
                    lab = flat[bi, layer, pi]
                    keep = lab > 0
                    key = ui[keep] * nl + lab[keep]
                    self.inter += torch.bincount(key, minlength=units * nl).view(units, nl).to(torch.float64)
        # intersections with whole-image labels: every on-pixel of the image
        if image_labels.numel():
            for j in range(image_labels.shape[1]):
                lab = image_labels[:, j]
                keep = lab > 0
                if keep.any():
                    self.inter.index_add_(1, lab[keep], act[keep].t())
        self.inter[:, 0] = 0

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


def _dedupe_layers(labels: torch.Tensor) -> torch.Tensor:
    """Zero a label in a layer when an earlier layer holds the same label at that pixel,
    so that a pixel counts once per concept."""
    if labels.shape[1] < 2:
        return labels
    labels = labels.clone()
    for i in range(1, labels.shape[1]):
        dup = torch.zeros_like(labels[:, i], dtype=torch.bool)
        for j in range(i):
            dup |= labels[:, j] == labels[:, i]
        labels[:, i][dup] = 0
    return labels


def _dedupe_image_labels(labels: torch.Tensor) -> torch.Tensor:
    """Zero repeated whole-image labels within a row."""
    if labels.shape[1] < 2:
        return labels
    labels = labels.clone()
    for i in range(1, labels.shape[1]):
        dup = (labels[:, :i] == labels[:, i : i + 1]).any(dim=1)
        labels[:, i][dup] = 0
    return labels
