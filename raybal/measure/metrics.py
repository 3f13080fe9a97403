"""Each task's loss and metric statistics, in one place.

* classification: cross-entropy; accuracy from (correct, total).
* segmentation: per-pixel cross-entropy (``IGNORE_INDEX`` pixels count nowhere); mIoU, pixel accuracy and
  per-class IoU from a confusion matrix.
* multilabel (labels a multi-hot float matrix (N, C), e.g. BigEarthNet's 19 classes): binary
  cross-entropy on each class's logit (mean over classes and samples); mAP (primary), micro / macro F1
  at probability 0.5 and per-class AP, from per-class histograms of the predicted probability of
  positive and negative labels (``MULTILABEL_BINS`` bins). The histograms add over batches and ranks
  like every other statistic; AP from them is exact for scores quantised to the bins (sklearn's
  ``average_precision_score`` with a threshold at each bin edge).

The task is read from the labels where that is unambiguous (float labels are multi-hot), so a balancing
method's own losses (``task_loss``) follow the task without naming it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raybal.config.tasks import IGNORE_INDEX

MULTILABEL_BINS = 1000


def is_multilabel(y: Tensor) -> bool:
    return y.is_floating_point()


def task_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The training loss of ``logits`` against ``y``: cross-entropy (per pixel for masks), or binary
    cross-entropy for multi-hot labels."""
    if is_multilabel(y):
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def summed_sample_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The sum over samples of each sample's loss (its per-pixel / per-class mean), in the logits' dtype."""
    if is_multilabel(y):
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="sum") / y.shape[1]
    return F.cross_entropy(logits, y, reduction="sum") / labelled_per_sample(y)


def labelled_per_sample(y: Tensor) -> Tensor:
    """Labels per sample that count (1 for classification; labelled pixels for segmentation), as a
    divisor that turns a summed per-pixel loss into a sum of per-sample means."""
    return ((y != IGNORE_INDEX).sum() / len(y)).clamp_min(1e-12)


def task_metric(logits: Tensor, y: Tensor, num_classes: int, task: str) -> tuple[Tensor, Tensor]:
    """Per-batch statistics: (correct count, total) for classification; a confusion matrix for
    segmentation; per-class probability histograms (C, 2, bins) of negatives / positives for multilabel."""
    if task == "multilabel":
        idx = multilabel_keys(logits, y)
        hist = torch.bincount(idx.flatten(), minlength=num_classes * 2 * MULTILABEL_BINS)
        return hist.view(num_classes, 2, MULTILABEL_BINS), torch.tensor(0)
    pred = logits.max(1).indices  # = argmax(1), and faster than it on CPU for (N, C, H, W) logits
    if task == "classification":
        return (pred == y).sum(), torch.tensor(y.numel())
    y, pred = y.flatten(), pred.flatten()
    keep = y != IGNORE_INDEX
    if not bool(keep.all()):
        y, pred = y[keep], pred[keep]
    idx = y * num_classes + pred
    conf = torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return conf, torch.tensor(0)


def multilabel_keys(logits: Tensor, y: Tensor) -> Tensor:
    """(N, C): where each sample's class c falls in the flattened (C, 2, bins) histograms: its label
    (negative / positive) and its predicted probability's bin."""
    bins = (torch.sigmoid(logits.float()) * MULTILABEL_BINS).long().clamp_(0, MULTILABEL_BINS - 1)
    cls = torch.arange(logits.shape[1], device=logits.device).expand_as(bins)
    return (cls * 2 + (y > 0.5).long()) * MULTILABEL_BINS + bins


def finish_metric(stat: Tensor, total: Tensor, task: str) -> float:
    """Accuracy; mean IoU over the classes that occur (in labels or predictions); or mAP over the
    classes with a positive label."""
    if task == "classification":
        return float(stat) / max(float(total), 1.0)
    if task == "multilabel":
        ap = average_precision(stat)
        return float(ap[~ap.isnan()].mean()) if (~ap.isnan()).any() else 0.0
    conf = stat.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    valid = union > 0
    return float((inter[valid] / union[valid]).mean()) if valid.any() else 0.0


def average_precision(hist: Tensor) -> Tensor:
    """Per-class AP from (C, 2, bins) histograms: sum over thresholds (bin edges, high to low) of
    recall gained x precision there; NaN for a class without positives."""
    h = hist.double().cpu().flip(-1)  # highest scores first
    tp, fp = h[:, 1].cumsum(-1), h[:, 0].cumsum(-1)
    pos = h[:, 1].sum(-1, keepdim=True)
    precision = tp / (tp + fp).clamp_min(1.0)
    ap = (h[:, 1] / pos.clamp_min(1.0) * precision).sum(-1)
    return torch.where(pos[:, 0] > 0, ap, torch.full_like(ap, float("nan")))


def metric_details(stat: Tensor | None, total: Tensor, task: str,
                   class_names: tuple[str, ...] = ()) -> dict[str, float | None]:
    """The task's secondary metrics from the same statistics as :func:`finish_metric`. Segmentation:
    ``pixel_accuracy`` (correct pixels / pixels) and ``iou.<class>`` per class (None for a class absent
    from both labels and predictions, the classes the mIoU leaves out). Multilabel: ``micro_f1`` and
    ``macro_f1`` at probability 0.5 (macro over the classes present in labels or predictions) and
    ``ap.<class>`` (None without positives). Classification: none."""
    if stat is None:
        return {}
    if task == "multilabel" and stat.dim() == 3:
        h = stat.double().cpu()
        half = MULTILABEL_BINS // 2
        tp, fn = h[:, 1, half:].sum(-1), h[:, 1, :half].sum(-1)
        fp = h[:, 0, half:].sum(-1)
        f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1.0)
        seen = (tp + fp + fn) > 0
        ap = average_precision(stat)
        out: dict[str, float | None] = {
            "micro_f1": float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp_min(1.0)),
            "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0}
        for c in range(len(h)):
            name = class_names[c] if c < len(class_names) else str(c)
            out[f"ap.{name}"] = None if bool(ap[c].isnan()) else float(ap[c])
        return out
    if task != "segmentation" or stat.dim() != 2:
        return {}
    conf = stat.double().cpu()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    out = {"pixel_accuracy": float(inter.sum() / conf.sum().clamp_min(1.0))}
    for c in range(len(conf)):
        name = class_names[c] if c < len(class_names) else str(c)
        out[f"iou.{name}"] = float(inter[c] / union[c]) if union[c] > 0 else None
    return out
