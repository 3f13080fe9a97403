"""``pmr``: prototypical modal rebalance (Fan, Xu, Wei, Hu, Wang, *PMR: Prototypical Modal Rebalance
for Multimodal Learning*, CVPR 2023).

Each modality m has one prototype per class k, the mean of its pooled features over training
samples of that class (the paper's prototypes, §3.2), recomputed at the start of every epoch
from the first ``proto_fraction`` of the epoch's training batches (eval mode, no gradient) and
blended with the previous ones, ``c <- (1 - momentum) c_new + momentum c_old``. Per batch, with
``z_m`` a sample's pooled feature:

    sim_m[k] = -||z_m - c_m[k]||_2                       (prototype logits, §3.2)
    s_m      = sum_i softmax(sim_m)_{i, y_i}              (how far modality m's features are along)
    PCE_m    = CE(sim_m, y)                                (prototypical cross-entropy, §3.3)
    L        = CE(fused logits, y) + sum_m w_m PCE_m

and the slower modality gets the prototypical loss: for M = 2, with rho = s_0 / s_1, w_1 = alpha if
rho > 1, w_0 = alpha if rho < 1, the other 0 (the reference code's rule). The PCE terms train the
encoders only (the prototypes are constants), pulling the lagging modality's features toward its
class prototypes so it learns faster; the fused loss is unchanged.

Differences from the reference code (fanyunfeng-bit/Modal-Imbalance-PMR, ``main_Prototype_grad.py``):

* prototypes are computed at the start of each epoch from that epoch's first batches (the reference:
  after each epoch, from the first tenth of a fresh pass over the training loader): the same
  statistic of another 10 % of the data; a class absent from those batches keeps its previous
  prototype (the reference divides by zero);
* ``scaling = "continuous"`` weights by alpha * clip(rho - 1, 0, 1) instead of the all-or-nothing
  alpha: raybal's option, not the authors' (BalanceBenchmark had such a rule and removed it, 59c3446);
* the reference stops the prototypical loss at epoch 100 of 150; here it runs to the end unless
  ``end_epoch`` is set (``end_epoch`` = 2/3 of ``train.epochs`` gives the reference's schedule);
* for M > 2 (not in the paper) every modality whose score is below the best one's gets the
  prototypical loss (``binary``: alpha; ``continuous``: alpha * clip(s_best / s_m - 1, 0, 1));
* the paper's prototype entropy regularisation of the leading modality (§3.4) is not in the
  reference code and not here.

Under data-parallel training the prototype sums and counts and the batch scores s_m are averaged
over ranks: every rank uses the global batch's prototypes and coefficients.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from raybal.balancing.base import (
    METHODS,
    MethodContext,
    ModalityMeans,
    WindowedMethod,
    full_precision,
    true_class_score,
)
from raybal.config import knob
from raybal.models.base import FusionModel, ModelOutput


@dataclass(frozen=True)
class PMRParams:
    alpha: float = knob(1.0, ge=0.0, doc="weight of the lagging modality's prototypical cross-entropy")
    momentum: float = knob(0.2, ge=0.0, lt=1.0, doc="share of the previous epoch's prototypes kept")
    proto_fraction: float = knob(0.1, gt=0.0, le=1.0, doc="share of each epoch's training batches the "
                                 "prototypes are computed from")
    scaling: Literal["binary", "continuous"] = "binary"
    start_epoch: int = knob(1, ge=1)
    end_epoch: int = knob(0, ge=0, doc="last epoch with the prototypical loss (0 = until the end)")

    def validate(self, prefix: str) -> None:
        WindowedMethod.check_window(self, prefix)


@METHODS.register("pmr", PMRParams)
class PMR(WindowedMethod):
    """Fan et al. 2023: prototypical cross-entropy for the lagging modality."""

    training_pass = True
    needs_pooled_features = True
    tasks = ("classification", "segmentation")  # one prototype per class and sample: single-label only

    def __init__(self, params: PMRParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.prototypes: dict[str, Tensor] | None = None  # modality -> (classes, dim)
        self.coefs = ModalityMeans("pmr_coef", 0.0)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.coefs.reset()

    @torch.no_grad()
    def on_training_data(self, model: FusionModel, batches: Any) -> None:
        n = max(1, math.ceil(self.params.proto_fraction * self.ctx.steps_per_epoch))
        sums: dict[str, Tensor] = {}
        counts: Tensor | None = None
        for xb, yb in itertools.islice(batches, n):
            out = model(xb)
            ncls = out.logits.shape[1]
            onehot = F.one_hot(yb, ncls).to(torch.float64)  # (N, C)
            counts = onehot.sum(0) if counts is None else counts + onehot.sum(0)
            for m in self.ctx.modalities:
                s = onehot.t() @ out.features[m].to(torch.float64)  # (C, D): per-class feature sums
                sums[m] = s if m not in sums else sums[m] + s
        if counts is None:
            return
        if self.ctx.all_reduce is not None:  # the global batches' sums (means over ranks: same ratio)
            flat = self.ctx.all_reduce(torch.cat([counts] + [sums[m].reshape(-1) for m in self.ctx.modalities]))
            counts, rest = flat[:len(counts)], flat[len(counts):]
            for m, part in zip(self.ctx.modalities, torch.split(rest, [sums[m].numel() for m in self.ctx.modalities])):
                sums[m] = part.view_as(sums[m])
        seen = (counts > 0)[:, None]
        new = {}
        for m in self.ctx.modalities:
            # counts are means over ranks (fractions of a sample on one rank): never clamped to 1; a class no
            # rank saw has 0 / tiny = 0 here and is filled below.
            fresh = (sums[m] / counts.clamp_min(1e-12)[:, None]).float()
            old = self.prototypes[m] if self.prototypes is not None else None
            if old is None:  # a class never seen yet: the mean of the classes seen
                fill = fresh[seen[:, 0]].mean(0, keepdim=True) if bool(seen.any()) else torch.zeros_like(fresh[:1])
                new[m] = torch.where(seen, fresh, fill)
            else:
                mom = self.params.momentum
                new[m] = torch.where(seen, (1 - mom) * fresh + mom * old, old)
        self.prototypes = new

    def coefficient_vector(self, scores: Tensor) -> Tensor:
        """w_m from the batch scores s_m (one per modality): alpha for every modality behind the best
        (binary), or alpha * clip(s_best / s_m - 1, 0, 1) (continuous); 0 for the best."""
        best = scores.max()
        if self.params.scaling == "binary":
            return torch.where(scores < best, torch.full_like(scores, self.params.alpha), torch.zeros_like(scores))
        return self.params.alpha * (best / scores.clamp_min(1e-12) - 1).clamp(0, 1)

    def extra_loss(self, x: dict[str, Tensor], out: ModelOutput, y: Tensor, loss: Tensor) -> Tensor | None:
        if not self.active() or self.prototypes is None:
            return None
        sims = {m: -torch.cdist(full_precision(out.features[m]), self.prototypes[m].to(out.features[m].device))
                for m in self.ctx.modalities}
        with torch.no_grad():
            scores = torch.stack([true_class_score(sims[m], y) for m in self.ctx.modalities])
            if self.ctx.all_reduce is not None:
                scores = self.ctx.all_reduce(scores)
            coef = self.coefficient_vector(scores.double()).float()
        self.coefs.add(coef)
        return sum(coef[i] * F.cross_entropy(sims[m], y) for i, m in enumerate(self.ctx.modalities))

    def epoch_log(self) -> dict[str, float]:
        return self.coefs.log(self.ctx.modalities)

    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": None if self.prototypes is None else {m: t.cpu() for m, t in self.prototypes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        protos = state.get("prototypes")
        self.prototypes = None if protos is None else {m: t.to(self.device) for m, t in protos.items()}
