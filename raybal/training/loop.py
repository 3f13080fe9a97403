"""The one training loop: ``fit(config) -> RunResult``, pure PyTorch, no Ray.

Every balancing method plugs in through the hooks of :class:`~raybal.balancing.base.BalanceMethod`;
Ray Train and Ray Tune wrap this function (``raybal.training.distributed``, ``raybal.study.driver``) and pass
a :class:`DistContext` for data-parallel runs. A run is seeded and deterministic on CPU,
checkpoints every ``train.checkpoint_every`` epochs with its records so far, and resumes from
that checkpoint with no epoch recorded twice.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raybal.balancing import METHODS, BalanceMethod, MethodContext
from raybal.config import ConfigError, RunConfig
from raybal.config.tasks import metric_name
from raybal.data import load_data
from raybal.data.base import MultiModalData
from raybal.measure.metrics import finish_metric, metric_details
from raybal.measure.robustness import sweep
from raybal.measure.utilization import (
    MUResult,
    conditional_utilization,
    mean_ablation_utilization,
    mean_features,
    measure,
    shapley_utilization,
    squeeze_means,
)
from raybal.models import build_model
from raybal.models.base import FusionModel
from raybal.models.crossrank import sync_batch_statistics
from raybal.models.pretrained import load_pretrained
from raybal.results import schema
from raybal.results.schema import RunResult
from raybal.training import checkpoint
from raybal.training.faults import maybe_inject
from raybal.training.selection import Selector, resolve_mode
from raybal.training.steps import check_finite, to_device, train_epoch

Progress = Callable[[dict[str, Any]], None]


@dataclass
class DistContext:
    """Where this process sits in a data-parallel run (rank 0 of 1 for plain ``fit``)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None
    report: Callable[[dict[str, Any] | None, Path | None], None] | None = None
    shard_log: Callable[[int, torch.Tensor], None] | None = None  # (epoch, this rank's sample indices)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(cfg: RunConfig, dist: DistContext | None = None) -> torch.device:
    if dist is not None and dist.device is not None:
        return dist.device
    if cfg.train.use_gpu:
        if not torch.cuda.is_available():
            raise ConfigError("train.use_gpu", "true, but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)


def _make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    params = [p for p in model.parameters()]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, foreach=True)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # foreach (one kernel per operation over all tensors; PyTorch's default on CUDA only): the same
    # arithmetic in the same order, bit for bit (tests/test_train.py), and a faster update on CPU.
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, foreach=True)


def build_for(cfg: RunConfig, data: MultiModalData) -> FusionModel:
    return build_model(cfg.model.name, cfg.model.params, data.modalities, data.shapes, data.num_classes)


def use_channels_last(memory_format: str, device: torch.device, model: torch.nn.Module) -> bool:
    """``train.memory_format``: auto = channels-last on CUDA when the model has 2-D convolutions (cuDNN's
    preferred layout under autocast). On CPU auto keeps PyTorch's NCHW: channels-last is faster there
    too (see benchmarks/bench_train.py), but its kernels round differently with the batch size, so a
    run would no longer agree with its 2-worker twin to the tolerance of tests/test_worker_invariance.py;
    ask for it with "channels_last"."""
    if memory_format != "auto":
        return memory_format == "channels_last"
    return device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def pretrained_files(cfg: RunConfig) -> dict[str, str]:
    return dict(getattr(cfg.model.params, "pretrained", None) or {})


def check_pretrained(cfg: RunConfig, data: MultiModalData) -> None:
    """Load ``model.pretrained`` into a fresh model: a missing, unreadable or mismatched file is a
    :class:`ConfigError` before any run starts (raybal.models.pretrained)."""
    if pretrained_files(cfg):
        load_pretrained(build_for(cfg, data), pretrained_files(cfg))


def _due(epoch: int, every: int, epochs: int) -> bool:
    """Whether an every-N-epochs measure (train.mu_every, train.test_every) runs this epoch: the last always does."""
    return epoch % every == 0 or epoch == epochs


def _trainable(model: torch.nn.Module) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in model.parameters())


def _sum_over_ranks(dist: DistContext, values: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Each tensor summed over the ranks of a data-parallel run (one all-reduce); unchanged on one process."""
    if dist.world_size == 1 or dist.all_reduce_mean is None:
        return values
    flat = torch.cat([v.detach().reshape(-1).to(device, torch.float64) for v in values])
    flat = (dist.all_reduce_mean(flat) * dist.world_size).cpu()
    out, i = [], 0
    for v in values:
        k = v.numel()
        part = flat[i:i + k].reshape(v.shape)
        out.append(part.round().to(v.dtype) if not v.dtype.is_floating_point else part.to(v.dtype))
        i += k
    return out


@dataclass
class _Run:
    """The state of one run, built by :func:`_set_up` and carried through the phases of :func:`fit`."""

    config: RunConfig
    trial_id: str
    dist: DistContext
    data: MultiModalData
    device: torch.device
    model: FusionModel
    method: BalanceMethod
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    autocast: torch.autocast
    channels_last: bool
    global_batch: int  # train.batch_size over all ranks; each rank trains on global_batch // world_size
    selector: Selector
    last_path: Path | None  # where last.pt goes (None: no checkpoints)
    ckpt_dir: Path | None
    start_epoch: int = 1
    t0: float = 0.0  # perf_counter at the start, moved back by a resumed run's earlier wall time
    epochs: list[dict[str, Any]] = field(default_factory=list)  # epochs.parquet rows so far
    utilization: list[dict[str, Any]] = field(default_factory=list)  # utilization.parquet rows so far
    val_mu: dict[int, MUResult] = field(default_factory=dict)  # epoch -> its validation MU, for _finalize
    train_model: torch.nn.Module | None = None  # the module the step calls: DDP-wrapped, compiled if asked
    wrapped_for: tuple[bool, ...] | None = None  # which parameters trained when train_model was wrapped

    @property
    def rank_batch(self) -> int:
        return self.global_batch // self.dist.world_size

    def wall_s(self) -> float:
        return time.perf_counter() - self.t0


@dataclass(frozen=True)
class _EpochStats:
    """One epoch of training, summed over ranks."""

    loss: float
    metric: float
    details: dict[str, Any]


def fit(config: RunConfig, *, trial_id: str = "run", checkpoint_dir: str | Path | None = None,
        progress: Progress | None = None, dist: DistContext | None = None,
        data: MultiModalData | None = None) -> RunResult:
    """Train one model as ``config`` says and measure it; see the module docstring.

    ``checkpoint_dir`` (optional) receives ``last.pt`` every ``train.checkpoint_every`` epochs
    (resumed from if present) and ``model.pt`` (the selected weights) at the end.
    """
    run = _set_up(config, trial_id, checkpoint_dir, dist or DistContext(), data)
    for epoch in range(run.start_epoch, config.train.epochs + 1):
        stats = _train_one_epoch(run, epoch)
        if not run.dist.is_main:
            if run.dist.report is not None:  # Ray Train's report is a barrier: every rank calls it each epoch
                run.dist.report(None, None)
            continue
        event = _evaluate_and_record(run, epoch, stats)
        _save_last(run, epoch)
        if progress is not None:  # after the checkpoint: a trial stopped on this report keeps its epoch
            progress(event)
        if run.dist.report is not None:
            run.dist.report(event, run.last_path)
    if not run.dist.is_main:
        return RunResult(trial_id=trial_id, config=config, wall_s=run.wall_s())
    return _finalize(run, progress)


def _set_up(config: RunConfig, trial_id: str, checkpoint_dir: str | Path | None, dist: DistContext,
            data: MultiModalData | None) -> _Run:
    """Seed, load the data, build the model, method and optimizer, and resume from ``last.pt`` if present."""
    t0 = time.perf_counter()
    tc = config.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    seed_everything(tc.seed)
    data = data or load_data(config.data)
    method_cls = METHODS.get(config.balance.method).obj
    holdout = None
    if method_cls.holdout_fraction(config.balance.params) > 0:  # e.g. G-Blending's V: never trained on
        data, holdout = data.hold_out(method_cls.holdout_fraction(config.balance.params), tc.seed)
    device = resolve_device(config, dist)
    if device.type == "cuda":  # pinned host memory: the per-batch .to(device, non_blocking=True) is async
        data = dataclasses.replace(data, train=data.train.pinned())
    model = build_for(config, data).to(device)
    if dist.world_size > 1:
        sync_batch_statistics(model)  # BatchNorm / running gates see the global batch, not this rank's slice

    # train.batch_size is the global batch: step k trains on the same samples for any number of workers,
    # each rank on its slice (Split.shard_order). A split smaller than one batch is one step.
    n_train, world = len(data.train), dist.world_size
    global_batch = tc.batch_size if n_train >= tc.batch_size else n_train - n_train % world
    method: BalanceMethod = method_cls(config.balance.params, MethodContext(
        model=model, modalities=data.modalities, epochs=tc.epochs, steps_per_epoch=n_train // global_batch,
        seed=tc.seed, world_size=world, all_reduce=dist.all_reduce_mean, rank=dist.rank, holdout=holdout))
    optimizer = _make_optimizer(config, model)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)
                 if tc.lr_schedule == "cosine" else None)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    channels_last = use_channels_last(tc.memory_format, device, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    run = _Run(config=config, trial_id=trial_id, dist=dist, data=data, device=device, model=model, method=method,
               optimizer=optimizer, scheduler=scheduler, autocast=autocast, channels_last=channels_last,
               global_batch=global_batch, selector=Selector(resolve_mode(tc.select, method.has_target),
                                                            method.tolerance),
               last_path=ckpt_dir / checkpoint.LAST if ckpt_dir else None, ckpt_dir=ckpt_dir, t0=t0)
    _resume(run)
    # Evaluation and the methods' extra passes (encode / fuse) run the plain model; the step runs this one.
    run.train_model = torch.compile(model) if tc.compile else model
    return run


def _resume(run: _Run) -> None:
    """Continue from ``last.pt`` when there is one (no epoch recorded twice); else load ``model.pretrained``."""
    st = checkpoint.load_last(run.last_path, run.config) if run.last_path is not None else None
    if st is None:
        if pretrained_files(run.config):  # a resumed run has its trained weights in last.pt
            load_pretrained(run.model, pretrained_files(run.config))
        return
    run.model.load_state_dict(st["model"])
    run.optimizer.load_state_dict(st["optimizer"])
    if run.scheduler is not None:
        run.scheduler.load_state_dict(st["scheduler"])
    run.method.load_state_dict(st["method"])
    run.epochs, run.utilization = st["epochs"], st["utilization"]
    run.selector.load_state_dict(st["best"])
    run.start_epoch = st["epoch"] + 1
    run.t0 -= st["wall_s"]


def _train_one_epoch(run: _Run, epoch: int) -> _EpochStats:
    """The method's epoch hooks around one pass of training steps over this rank's shard of the epoch."""
    tc, dist, model, method = run.config.train, run.dist, run.model, run.method
    method.on_epoch_start(epoch)
    if dist.wrap_model is not None and _trainable(model) != run.wrapped_for:
        # (Re)wrap for DDP after the method set what trains (e.g. frozen encoders): DDP expects a
        # gradient for every parameter that required one when it was built.
        run.train_model, run.wrapped_for = dist.wrap_model(model), _trainable(model)
        if tc.compile:
            run.train_model = torch.compile(run.train_model)
    train_model = run.train_model
    assert train_model is not None
    train_model.train()
    method.on_train_mode(model)
    g = torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
    order = run.data.train.shard_order(shuffle=True, generator=g, rank=dist.rank, world=dist.world_size,
                                       global_batch=run.global_batch)
    if dist.shard_log is not None:
        dist.shard_log(epoch, order)
    aug = (tc.seed, epoch)  # [data.augment], drawn per (seed, epoch, sample): the same on any number of workers
    if method.training_pass:  # e.g. PMR's prototypes, from this rank's shard of the epoch's batches
        model.eval()
        seen = aug if method.training_pass_augmented else None
        method.on_training_data(model, ((to_device(xb, run.device, run.channels_last),
                                         yb.to(run.device, non_blocking=True))
                                        for xb, yb in run.data.train.batches(run.rank_batch, order=order,
                                                                             drop_last=True, augment=seen)))
        train_model.train()
        method.on_train_mode(model)
    task = run.data.task
    ep = train_epoch(train_model, method, run.optimizer,
                     run.data.train.batches(run.rank_batch, order=order, drop_last=True, augment=aug),
                     run.autocast, device=run.device, num_classes=run.data.num_classes, task=task,
                     channels_last=run.channels_last)
    # The train-split row covers every rank's samples (sums over ranks), as with one worker; the
    # non-finite count too, so that every rank stops together.
    loss_sum, n_seen, stat, total, nonfinite = _sum_over_ranks(
        dist, [ep.loss_sum, torch.tensor(float(ep.n_seen)), ep.stat if ep.stat is not None else torch.tensor(0),
               ep.total, ep.nonfinite], run.device)
    check_finite(nonfinite, epoch)  # the epoch's reads of the device happen from here on (training/steps.py)
    if run.scheduler is not None:
        run.scheduler.step()
    method.on_epoch_end(epoch)
    # no-op unless RAYBAL_FAULT is set (reliability tests)
    maybe_inject(run.config, epoch, run.last_path.parent if run.last_path is not None else None)
    return _EpochStats(loss=float(loss_sum) / max(int(n_seen), 1), metric=finish_metric(stat, total, task),
                       details=metric_details(stat, total, task, run.data.class_names))


def _evaluate_and_record(run: _Run, epoch: int, stats: _EpochStats) -> dict[str, Any]:
    """Rank 0: the epoch's validation (and test) rows, its validation MU, the selection's offer; returns
    the progress event."""
    tc, data, model, method, tid = run.config.train, run.data, run.model, run.method, run.trial_id
    task, ncls, names = data.task, data.num_classes, data.class_names
    metric = metric_name(task)
    logs = method.epoch_log()
    measure_mu = _due(epoch, tc.mu_every, tc.epochs)
    val = measure(model, data.val, num_classes=ncls, task=task, n_repeats=tc.mu_repeats, seed=tc.seed + epoch,
                  modalities=data.modalities if measure_mu else ())
    run.epochs += [schema.epoch_row(tid, epoch, "train", task, stats.loss, stats.metric, logs, stats.details),
                   schema.epoch_row(tid, epoch, "val", task, val.loss, val.metric, logs,
                                    metric_details(val.stat, val.total, task, names))]
    if tc.test_every and _due(epoch, tc.test_every, tc.epochs):  # a record only: nothing reads it
        test = measure(model, data.test, num_classes=ncls, task=task, modalities=())
        run.epochs.append(schema.epoch_row(tid, epoch, "test", task, test.loss, test.metric, logs,
                                           metric_details(test.stat, test.total, task, names)))
    val_extra = method.split_metrics(val) if measure_mu else {}
    if measure_mu:
        method.on_validation(val)
        run.val_mu[epoch] = val
        run.utilization += schema.utilization_rows(tid, epoch, "val", val, final=False,
                                                   modality_log=method.modality_log())
    # Epochs before the method acts are not candidates (BalanceMethod.selectable); raybal.training.selection.
    run.selector.offer(epoch, val.metric, method.selectable(epoch), model.state_dict(),
                       method.target_error(val) if measure_mu else None)
    return {"trial_id": tid, "epoch": epoch, "epochs": tc.epochs, "metric": metric,
            "train_loss": stats.loss, f"train_{metric}": stats.metric, f"val_{metric}": val.metric,
            "val_loss": val.loss, "mu": dict(val.shares) if measure_mu else None, "method_log": logs,
            **{f"val_{k}": v for k, v in val_extra.items()}}


def _save_last(run: _Run, epoch: int) -> None:
    """``last.pt`` every ``train.checkpoint_every`` epochs and at the last: weights, optimizer, method state,
    the selection and the records so far."""
    tc = run.config.train
    if run.last_path is None or not (epoch % tc.checkpoint_every == 0 or epoch == tc.epochs):
        return
    checkpoint.save_last(run.last_path, config=run.config, epoch=epoch, model=run.model.state_dict(),
                         optimizer=run.optimizer.state_dict(),
                         scheduler=run.scheduler.state_dict() if run.scheduler is not None else None,
                         method=run.method.state_dict(), epochs=run.epochs, utilization=run.utilization,
                         best=run.selector.state_dict(), wall_s=run.wall_s())


def _finalize(run: _Run, progress: Progress | None) -> RunResult:
    """Load the selected weights and measure them: final metrics, test MU, Wu's u(m|.), robustness."""
    cfg, data, model, method, tid = run.config, run.data, run.model, run.method, run.trial_id
    tc = cfg.train
    task, ncls = data.task, data.num_classes
    best_epoch, state, selected_by = run.selector.chosen()
    if state is not None:
        model.load_state_dict(state)
    # The validation MU with the seed the selection saw for this epoch: final.val_* agrees with the selection.
    # (The same weights, seed and split as that epoch's measure: reused when this process measured it.)
    val = run.val_mu.get(best_epoch) or measure(model, data.val, num_classes=ncls, task=task,
                                                n_repeats=tc.mu_repeats, seed=tc.seed + best_epoch,
                                                modalities=data.modalities)
    test = measure(model, data.test, num_classes=ncls, task=task, n_repeats=tc.mu_repeats, seed=tc.seed,
                   modalities=data.modalities)
    # Wu's conditional utilization rate (gated fusions; None otherwise), the mean-ablation utilization and
    # the Shapley contribution, on validation (held out from the training distribution, where Wu measures) and on test.
    squeezes = squeeze_means(model, data.train) if model.has_gates else []
    feat_means = mean_features(model, data.train)
    measures: dict[str, dict[str, dict[str, Any]]] = {}
    final_rows: list[dict[str, Any]] = []
    for split, mu in (("val", val), ("test", test)):
        sp = data.split(split)
        measures[split] = {
            "cond_util": conditional_utilization(model, sp, squeezes, num_classes=ncls, task=task),
            "ablation_util": mean_ablation_utilization(model, sp, feat_means, num_classes=ncls, task=task),
            "shapley": shapley_utilization(model, sp, num_classes=ncls, task=task)}
        final_rows += schema.utilization_rows(tid, best_epoch, split, mu, final=True, **measures[split])
    utilization = schema.with_final(run.utilization, final_rows)
    final = schema.final_metrics(task, best_epoch, val, test, measures,
                                 {"val": method.split_metrics(val), "test": method.split_metrics(test)},
                                 data.class_names)
    final["final.selected_by"] = selected_by
    final["final.steered_by_val"] = method.steers_by_validation
    if method.has_target:
        final.update(schema.target_met_columns(method.target_error(test), method.tolerance))
    robustness: list[dict[str, Any]] = []
    if cfg.robustness.enabled:
        def tick(done: int, total: int) -> None:
            if progress is not None:
                progress({"trial_id": tid, "robustness": (done, total)})

        points = sweep(model, data, cfg.robustness, mu_repeats=tc.mu_repeats, progress=tick)
        robustness = schema.robustness_rows(tid, points, task, cfg.robustness.measure_mu)
        clean = {split: final[f"final.{split}_{metric_name(task)}"] for split in ("val", "test")}
        final.update(schema.robustness_summary(robustness, task, clean))
    selected = None
    if run.ckpt_dir is not None:
        path = run.ckpt_dir / checkpoint.SELECTED
        checkpoint.save_selected(path, config=cfg, model=model.state_dict(), epoch=best_epoch, final=final,
                                 trial_id=tid,
                                 normalizer=data.normalizer.to_dict() if data.normalizer is not None else None)
        selected = str(path)
    return RunResult(trial_id=tid, config=cfg, epochs=run.epochs, utilization=utilization, robustness=robustness,
                     final=final, checkpoint=selected, wall_s=run.wall_s())
