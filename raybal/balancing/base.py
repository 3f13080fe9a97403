"""The balancing-strategy interface: small hooks over the one training loop (DESIGN.md §5.4).

The loop in :mod:`raybal.training.loop` calls, per epoch and per step::

    on_epoch_start(epoch)            # e.g. warm-up of a penalty weight, freezing encoders
    on_training_data(model, batches) # only if training_pass: a look at the epoch's training batches
                                     # (eval mode, this rank's shard), e.g. PMR's class prototypes
    before_step()                    # per-step mode, e.g. Wu's re-balancing gate override
    x = prepare_batch(x, y)          # e.g. modality dropout
    out = model(x); loss = task_loss(out, y)   # CE of the fused logits; Wu's guided: sum of branch CEs
    extra = extra_loss(x, out, y, loss)  # e.g. the mu_target penalty
    backward(loss, extra)            # (loss + extra).backward(); e.g. MMPareto's per-loss gradients
    after_backward(out, y)           # e.g. OGM-GE gradient modulation, learning-speed sums
    optimizer.step(); after_step()
    on_epoch_end(epoch)              # before the epoch's evaluation
    on_validation(mu)                # the epoch's validation MU (main rank), e.g. a target's feedback

A method owns everything about itself (DESIGN.md §5.10): its knobs (the params dataclass it
registers with), its hooks, its per-epoch scalars (:meth:`epoch_log`, :meth:`modality_log`),
the metrics it computes on a measured split (:meth:`split_metrics`, which become per-epoch
``val_<name>`` progress values and ``final.<split>_<name>`` columns) and the study objectives it
offers (:attr:`objectives`). The loop, the study and the reports name no method.

Methods see the model only through its public contract (``encode``/``fuse``, per-modality
logits, ``branch_parameters``, gates) and keep their own state in ``state_dict`` so a run
resumes exactly. A method registers itself where it is defined::

    @METHODS.register("my_method", MyParams)
    class MyMethod(BalanceMethod): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from raybal.config import ConfigError
from raybal.config.registry import RegistrationError, Registry
from raybal.config.tasks import IGNORE_INDEX
from raybal.measure.metrics import is_multilabel, task_loss
from raybal.models.base import FusionModel, ModelOutput

if TYPE_CHECKING:
    from raybal.config import RunConfig
    from raybal.measure.utilization import MUResult


@dataclass
class MethodContext:
    """What a method may know about the run it is part of."""

    model: FusionModel
    modalities: tuple[str, ...]
    epochs: int
    steps_per_epoch: int
    seed: int
    world_size: int = 1
    all_reduce: Any = None  # callable(Tensor) -> Tensor (mean over ranks), None when single process
    rank: int = 0  # this process's slice of each global batch is [rank * n, (rank + 1) * n)
    holdout: Any = None  # the training samples held out from training for the method (holdout_fraction)


class BalanceMethod:
    """Base strategy: ordinary training. Subclasses override only the hooks they need."""

    needs_gates: ClassVar[bool] = False
    needs_modality_logits: ClassVar[bool] = False
    # Study objectives this method offers beyond the task metrics: trials column -> default mode.
    objectives: ClassVar[dict[str, str]] = {}
    # A method with a utilization target (``target_error``, ``tolerance``) gets target-aware model
    # selection (``train.select = "auto"``) and ``final.target_met`` / ``final.target_error``.
    has_target: ClassVar[bool] = False
    # on_training_data is called each epoch with the epoch's training batches (a per-epoch data pass),
    # augmented as training sees them unless training_pass_augmented is False (e.g. a loss compared with a
    # held-out one)
    training_pass: ClassVar[bool] = False
    training_pass_augmented: ClassVar[bool] = True
    # The method's ``backward`` makes the gradients itself (several backward passes, gradient surgery) and
    # averages them over data-parallel ranks itself (:meth:`all_reduce_tensors`): the loop runs its step
    # without DDP's own gradient averaging.
    owns_gradients: ClassVar[bool] = False
    # The method makes the whole update itself (``update``: e.g. one optimizer step per modality), with
    # its own gradient averaging over ranks; the loop only feeds it batches.
    owns_update: ClassVar[bool] = False
    # The method cannot work with more than this many modalities (None: any M >= 2); refused at load.
    max_modalities: ClassVar[int | None] = None
    needs_pooled_features: ClassVar[bool] = False
    # The tasks the method is defined for (refused at load for others).
    tasks: ClassVar[tuple[str, ...]] = ("classification", "segmentation", "multilabel")

    def __init__(self, params: Any, ctx: MethodContext) -> None:
        self.params = params
        self.ctx = ctx
        self.epoch = 0

    @classmethod
    def check_config(cls, cfg: RunConfig, model_cls: type[FusionModel]) -> None:
        """Checks that span sections (e.g. target modalities vs. the data set's, the model's gates)."""
        # A dense (segmentation-only) model is refused with the reason: its features are per-pixel maps.
        dense = "" if "classification" in model_cls.tasks else "; no segmentation model has them"
        if cls.needs_gates and not model_cls.has_gates:
            raise ConfigError("model.name", f"balance.method {cfg.balance.method!r} needs a model with "
                              f"cross-modal gates (model.name = \"mmtm\"), not {cfg.model.name!r}{dense}")
        if cfg.train.select == "target" and not cls.has_target:
            raise ConfigError("train.select", f"\"target\" needs a method with a utilization target (mu_target), "
                              f"not {cfg.balance.method!r}; use \"auto\", \"best_val\" or \"last\"")
        if cls.max_modalities is not None and len(cfg.modalities) > cls.max_modalities:
            raise ConfigError("balance.method", f"{cfg.balance.method!r} is defined for at most {cls.max_modalities} "
                              f"modalities; the data set has {len(cfg.modalities)} ({', '.join(cfg.modalities)})")
        if cls.needs_pooled_features and not model_cls.pooled_features:
            raise ConfigError("model.name", f"balance.method {cfg.balance.method!r} needs one pooled feature vector "
                              f"per modality (model.name = \"late\" or \"sum\"), not {cfg.model.name!r}{dense}")
        task = cfg.data.params.task
        if task not in cls.tasks:
            raise ConfigError("balance.method", f"{cfg.balance.method!r} is not defined for the {task} task of "
                              f"data set {cfg.data.name!r} (it is for: {', '.join(cls.tasks)})")
        if cls.needs_modality_logits and not model_cls.has_modality_logits:
            raise ConfigError("model.name", f"balance.method {cfg.balance.method!r} needs per-modality logits, "
                              f"which model {cfg.model.name!r} does not provide")

    @classmethod
    def holdout_fraction(cls, params: Any) -> float:
        """The share of the training split the method needs held out from training (0: none): the loop
        draws it once (``MultiModalData.hold_out``, seeded by ``train.seed``) and hands it over as
        ``ctx.holdout``; training runs on the rest."""
        return 0.0

    @classmethod
    def acting_epoch(cls, cfg: RunConfig) -> int:
        """The first epoch at whose end the method has fully acted (its warm-up done, its start epoch
        reached): a trial scheduler must not judge a run before it (ASHA's grace period, study/driver.py)."""
        return 1

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_mode(self, model: FusionModel) -> None:
        """Called after ``model.train()``; e.g. keep frozen encoders in eval mode."""

    def on_training_data(self, model: FusionModel, batches: Any) -> None:
        """With ``training_pass``: called at the start of each epoch, before training, with the model
        in eval mode and an iterator over this rank's training batches of the epoch (on the device,
        ``(x, y)``); a method reading statistics from them averages them over ranks itself."""

    def before_step(self) -> None:
        pass

    def prepare_batch(self, x: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        """The training batch as the model will see it (inputs on the device; return a new dict)."""
        return x

    def task_loss(self, out: ModelOutput, y: Tensor) -> Tensor:
        """The training loss before any penalty: cross-entropy of the fused logits (binary cross-entropy
        for multi-hot labels, :func:`raybal.measure.metrics.task_loss`)."""
        return task_loss(full_precision(out.logits), y)

    def extra_loss(self, x: dict[str, Tensor], out: ModelOutput, y: Tensor, loss: Tensor) -> Tensor | None:
        return None

    def backward(self, loss: Tensor, extra: Tensor | None) -> None:
        """Make the step's gradients: by default one backward pass of the total loss. A method with
        ``owns_gradients`` overrides this and averages its gradients over ranks (:meth:`all_reduce_tensors`)."""
        (loss + extra if extra is not None else loss).backward()

    def update(self, optimizer: torch.optim.Optimizer, x: dict[str, Tensor], y: Tensor,
               autocast: Any) -> tuple[ModelOutput, Tensor, Tensor]:
        """With ``owns_update``: the whole training step on one batch (forward passes, backward passes,
        optimizer steps, averaging over ranks); returns (output, task loss, total loss) like the loop's."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The model's device (where a method's restored state goes)."""
        return next(self.ctx.model.parameters()).device

    def all_reduce_tensors(self, tensors: list[Tensor]) -> None:
        """Average ``tensors`` (e.g. gradients) over data-parallel ranks in place, in one collective
        (a no-op in a single process)."""
        if self.ctx.all_reduce is None or self.ctx.world_size == 1 or not tensors:
            return
        flat = self.ctx.all_reduce(torch.cat([t.reshape(-1) for t in tensors]))
        for t, new in zip(tensors, torch.split(flat, [t.numel() for t in tensors])):
            t.copy_(new.view_as(t))

    def after_backward(self, out: ModelOutput, y: Tensor) -> None:
        pass

    def after_step(self) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        """After the epoch's last step, before its evaluation."""

    def on_validation(self, mu: MUResult) -> None:
        """The epoch's validation utilization, when measured (``train.mu_every``), on the main rank
        only: a method that steers by it shares what it learns with the other ranks itself."""

    def selectable(self, epoch: int) -> bool:
        """May the weights after ``epoch`` be picked as the run's model (``train.select = "best_val"``)?

        A method whose effect starts late (a warm-up, a start epoch) says no for the epochs before
        it acts: with validation accuracy saturated early, best-validation selection would
        otherwise return the un-balanced model of epoch 1.
        """
        return True

    @property
    def steers_by_validation(self) -> bool:
        """Training itself reads the validation split (e.g. a set point moved by the validation MU), beyond
        model selection: ``final.val_*`` is then not a held-out number (``final.steered_by_val``)."""
        return False

    @property
    def tolerance(self) -> float | None:
        """The largest :meth:`target_error` that counts as meeting the target (None: no target)."""
        return None

    def target_error(self, mu: MUResult) -> float | None:
        """How far a measured split's utilization is from the method's target (None: no target)."""
        return None

    def epoch_log(self) -> dict[str, float]:
        """Scalars for ``epochs.parquet`` (e.g. ``lambda_mu``), reset each epoch by the method."""
        return {}

    def modality_log(self) -> dict[str, dict[str, float]]:
        """Per-modality scalars for ``utilization.parquet`` (e.g. ``learning_speed``)."""
        return {}

    def split_metrics(self, mu: MUResult) -> dict[str, Any]:
        """Metrics of one measured split (e.g. the distance of its MU to a target). Reported per
        epoch on validation as ``val_<name>`` and at the end as ``final.val_<name>`` /
        ``final.test_<name>``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class WindowedMethod(BalanceMethod):
    """A method that acts from ``params.start_epoch`` to ``params.end_epoch`` (inclusive; 0 = to the end):
    the window's checks, ASHA's acting epoch and best-validation selection from its start."""

    @staticmethod
    def check_window(params: Any, prefix: str) -> None:
        if params.end_epoch and params.end_epoch < params.start_epoch:
            raise ConfigError(f"{prefix}.end_epoch", f"must be >= start_epoch = {params.start_epoch} (or 0)")

    @classmethod
    def acting_epoch(cls, cfg: RunConfig) -> int:
        return min(cfg.balance.params.start_epoch, cfg.train.epochs)

    def selectable(self, epoch: int) -> bool:
        return epoch >= min(self.params.start_epoch, self.ctx.epochs)

    def active(self) -> bool:
        p = self.params
        return self.epoch >= p.start_epoch and (p.end_epoch == 0 or self.epoch <= p.end_epoch)


class ModalityMeans:
    """Per-modality values summed on the device step by step and read once, at the epoch's end, as
    their means (``<prefix>.<modality>`` columns of ``epochs.parquet``; ``idle`` when none was added)."""

    def __init__(self, prefix: str, idle: float) -> None:
        self.prefix, self.idle = prefix, idle
        self.reset()

    def reset(self) -> None:
        self.total: Tensor | None = None
        self.n = 0

    def add(self, values: Tensor) -> None:
        self.total = values if self.total is None else self.total + values
        self.n += 1

    def log(self, modalities: tuple[str, ...] | list[str]) -> dict[str, float]:
        if self.total is None or not self.n:
            return {f"{self.prefix}.{m}": self.idle for m in modalities}
        return {f"{self.prefix}.{m}": v for m, v in zip(modalities, (self.total / self.n).tolist())}


def true_class_score(logits: Tensor, y: Tensor) -> Tensor:
    """sum_i softmax(logits_i)[y_i] over the samples, and for segmentation over every labelled pixel
    (pixels marked IGNORE_INDEX count nowhere): OGM-GE's s_k (Peng et al. 2022, Eq. 8) and the scores
    built like it, per pixel for dense outputs. Multi-hot labels: each sample's mean over classes of the
    probability its sigmoid gives the true outcome (sigmoid(l) for a present class, 1 - sigmoid(l) for
    an absent one), the same "how sure of the truth" score with one binary decision per class."""
    if is_multilabel(y):
        p = full_precision(logits).sigmoid()
        return torch.where(y > 0.5, p, 1 - p).mean(1).sum()
    keep = y != IGNORE_INDEX
    p = full_precision(logits).softmax(1).gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1)
    return torch.where(keep, p, torch.zeros_like(p)).sum()


def full_precision(t: Tensor) -> Tensor:
    """``t`` in at least float32 (a loss under bf16 autocast is computed in float32; float64 stays)."""
    return t if t.dtype == torch.float64 else t.float()


def _check_method(name: str, obj: Any, params: type | None) -> None:
    if not (isinstance(obj, type) and issubclass(obj, BalanceMethod)):
        raise RegistrationError(f"balancing method {name!r}: {obj!r} must subclass BalanceMethod")
    for key, mode in obj.objectives.items():
        if not key.startswith("final.val_") or mode not in ("max", "min"):
            raise RegistrationError(f"balancing method {name!r}: objective {key!r} must be a final.val_* column "
                                    f"with mode 'max' or 'min', got {mode!r}")


METHODS: Registry[type[BalanceMethod]] = Registry("balancing method", _check_method)
BASELINE = "vanilla"  # the method a study compares every answer with by default (study.baseline)


@METHODS.register("vanilla")
class Vanilla(BalanceMethod):
    """Ordinary joint training: cross-entropy on the fused logits, nothing else."""
