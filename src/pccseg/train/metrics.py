"""Segmentation scores from a confusion matrix: mIoU, per-class IoU and accuracy (report Table 3).

Conventions (the usual ones, as in mmsegmentation and torchvision's references):

* the confusion matrix ``cm`` is (C, C) int64 with **rows = ground truth, columns = prediction**
  (scikit-learn's order); pixels whose target is the ignore index (255) are not counted;
* IoU of class c = cm[c, c] / (row sum + column sum - cm[c, c]); NaN when the class is absent from both
  the prediction and the target (union 0); mIoU is the mean over the classes that are not NaN;
* accuracy of class c = cm[c, c] / row sum (the share of the class's pixels labelled right, mmseg's
  "Acc"); NaN when the class has no target pixels; ``pixel_acc`` is the overall share of right pixels.

Scores are fractions in [0, 1]; tables print percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..vocab import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Confusion matrix of label maps.

    pred, target: integer tensors of the same shape (any, e.g. (N, H, W)), on any device.
    Returns (num_classes, num_classes) int64 on the inputs' device; ``cm[t, p]`` counts pixels with
    target ``t`` and prediction ``p``. Target pixels equal to ``ignore_index`` are skipped. A target or
    prediction value outside ``0..num_classes-1`` (other than an ignored target) raises ``ValueError``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel():
        lo = torch.minimum(pred.min(), target.min()).item()
        hi = torch.maximum(pred.max(), target.max()).item()
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"label values must lie in 0..{num_classes - 1} (or {ignore_index} in the "
                             f"target); found values in {lo}..{hi}")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _nan_to_none(xs: Sequence[float]) -> list[float | None]:
    return [None if math.isnan(x) else float(x) for x in xs]


def percent(x: float | None) -> str:
    """A score kept as a fraction (log.jsonl, checkpoint.json, train()'s result), printed for people:
    ``0.0084 -> "0.84 %"``; None or NaN -> ``"n/a"``."""
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f} %"


@dataclass
class Scores:
    """Scores of one evaluation.

    miou: mean IoU over the classes present in prediction or target; iou, acc: per class (NaN where
    undefined); pixel_acc: overall pixel accuracy; macc: mean of the defined per-class accuracies;
    class_names: one per class; confusion: the (C, C) matrix they come from (rows = target).
    """

    miou: float
    iou: list[float]
    acc: list[float]
    pixel_acc: float
    macc: float
    class_names: list[str] = field(default_factory=list)
    confusion: torch.Tensor | None = None

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes ``null``; the confusion matrix as nested lists."""
        d = {
            "miou": None if math.isnan(self.miou) else self.miou,
            "pixel_acc": None if math.isnan(self.pixel_acc) else self.pixel_acc,
            "macc": None if math.isnan(self.macc) else self.macc,
            "class_names": list(self.class_names),
            "iou": _nan_to_none(self.iou),
            "acc": _nan_to_none(self.acc),
        }
        if self.confusion is not None:
            d["confusion"] = self.confusion.cpu().tolist()
        return d

    def rows(self) -> list[tuple[str, float, float]]:
        """(class name, IoU, accuracy) per class."""
        names = self.class_names or [str(i) for i in range(len(self.iou))]
        return list(zip(names, self.iou, self.acc))

    def markdown(self) -> str:
        """Table 3 style Markdown: one row per class (IoU %, Acc %), then the mean row."""

        def pct(x: float) -> str:
            return "-" if math.isnan(x) else f"{100 * x:.2f}"

        lines = ["| class | IoU | Acc |", "|---|---:|---:|"]
        lines += [f"| {n} | {pct(i)} | {pct(a)} |" for n, i, a in self.rows()]
        lines.append(f"| **mean** | **{pct(self.miou)}** | **{pct(self.macc)}** |")
        lines.append(f"\npixel accuracy: {pct(self.pixel_acc)}")
        return "\n".join(lines)

    def csv(self) -> str:
        """CSV text: class,iou,acc per class (fractions; empty where undefined), then a mean row."""

        def f(x: float) -> str:
            return "" if math.isnan(x) else f"{x:.6f}"

        lines = ["class,iou,acc"] + [f"{n},{f(i)},{f(a)}" for n, i, a in self.rows()]
        lines.append(f"mean,{f(self.miou)},{f(self.macc)}")
        lines.append(f"pixel_acc,,{f(self.pixel_acc)}")
        return "\n".join(lines) + "\n"


def scores_from_confusion(cm: torch.Tensor, class_names: Sequence[str] | None = None) -> Scores:
    """Scores from a (C, C) confusion matrix (rows = target, columns = prediction)."""
    cm64 = cm.detach().to("cpu", torch.float64)
    tp = cm64.diagonal()
    gt = cm64.sum(1)
    pr = cm64.sum(0)
    union = gt + pr - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    total = cm64.sum()
    pixel_acc = (tp.sum() / total).item() if total > 0 else float("nan")

    def nanmean(x: torch.Tensor) -> float:
        ok = ~torch.isnan(x)
        return x[ok].mean().item() if ok.any() else float("nan")

    return Scores(miou=nanmean(iou), iou=iou.tolist(), acc=acc.tolist(), pixel_acc=pixel_acc,
                  macc=nanmean(acc), class_names=list(class_names or []), confusion=cm.detach().cpu())
