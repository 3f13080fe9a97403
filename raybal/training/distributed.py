"""Data-parallel training on Ray Train (DESIGN.md §6): the same :func:`raybal.training.loop.fit`, N workers.

Ray is touched here only (and in the study wing). A ``TorchTrainer`` starts one process per worker;
Ray Train sets up the process group (gloo on CPU, NCCL on GPU); each worker wraps the model in
DDP and trains on its own disjoint shard of every epoch's permutation with ``train.batch_size /
workers`` samples per step, so the global batch and the optimisation match ``--workers 1``.
Rank 0 alone evaluates (val/test metrics, MU, robustness) and writes the epoch checkpoint, so
the numbers do not depend on N. How the balancing methods stay consistent across ranks:

* ``mu_target``: the per-modality loss gaps are averaged over ranks with an autograd-aware
  all-reduce before u = d / sum d, so every rank penalises the same global-batch estimate;
* ``greedy_*``: learning speeds are read after DDP's gradient all-reduce (identical on every
  rank), and the random control draws from identically seeded generators;
* ``ogm_ge``: the per-modality scores are all-reduced before the coefficient; the GE noise
  comes from identically seeded generators, so parameters stay identical.

Fault tolerance: every epoch rank 0 writes ``last.pt`` (atomic rename) under the results
directory; a killed worker makes Ray Train restart the worker group (``FailureConfig``,
``train.max_failures``) and every rank resumes from that checkpoint; a restarted driver with
the same ``--results`` does the same. Epoch records live in the checkpoint, so none repeats.
On a multi-node cluster the results directory must be on shared storage (NFS, a mounted bucket).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from raybal._atomic import atomic_write_bytes
from raybal.balancing import METHODS
from raybal.config import RunConfig
from raybal.resolve import config_from_json
from raybal.results.schema import RunResult
from raybal.training.loop import DistContext, Progress, fit
from raybal.training.result_file import RESULT_FILE, read_result, write_result


def init_ray(address: str | None, *, log_to_driver: bool = False) -> bool:
    """Connect to ``address`` (e.g. ``auto``) or start a local Ray; True when this call started it."""
    import logging

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": log_to_driver}
    if address:
        ray.init(address=address, **kw)
    else:
        # Each epoch's ray.train.report waits for the Train controller's next poll of the workers (every 2 s
        # by default): on a local Ray, where epochs can be short, it polls every 0.25 s.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=True, **kw)
    return True


def _worker(loop: dict[str, Any]) -> None:
    """The per-worker training function (runs in a Ray Train worker process)."""
    import logging

    import ray.train
    import torch.distributed as td
    from ray.train.v2._internal.execution import context as _train_context
    from torch.nn.parallel import DistributedDataParallel as DDP

    logging.getLogger(_train_context.__file__).setLevel(logging.WARNING)  # its per-report INFO line is noise
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config_from_json(loop["config_json"])
    torch.set_num_threads(cfg.train.cpus_per_worker)
    if cfg.train.use_gpu and torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    ckdir = Path(loop["checkpoint_dir"])
    atomic_write_bytes(ckdir / "workers" / f"rank{rank}.pid", str(os.getpid()).encode())  # for fault-injection tests

    # Greedy re-balancing steps bypass a gate's parameters: only then must DDP look for unused ones.
    unused = bool(METHODS.get(cfg.balance.method).obj.needs_gates)

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=unused)

    def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        td.all_reduce(t)
        return t / world

    def report(event: dict[str, Any] | None, last_path: Path | None) -> None:
        metrics = {"epoch": event["epoch"]} if event else {}
        if event:
            metrics.update({k: v for k, v in event.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        ray.train.report(metrics)

    def shard_log(epoch: int, order: torch.Tensor) -> None:
        if epoch <= 3:  # the record a test checks: each rank's samples of the first epochs (what its loader reads)
            name = f"rank{rank}.json" if epoch == 1 else f"rank{rank}-e{epoch}.json"
            atomic_write_bytes(ckdir / "shards" / name, json.dumps(order.tolist()).encode())

    progress = loop.get("progress") if rank == 0 else None  # handed in by the caller (picklable)
    dist = DistContext(rank=rank, world_size=world, device=device, wrap_model=wrap, all_reduce_mean=all_reduce_mean,
                       report=report, shard_log=shard_log)
    result = fit(cfg, trial_id=loop["trial_id"], checkpoint_dir=ckdir, progress=progress, dist=dist)
    if rank == 0:
        write_result(ckdir, result)


def fit_distributed(config: RunConfig, *, trial_id: str = "run", checkpoint_dir: str | Path,
                    storage_path: str | Path, address: str | None = None, quiet: bool = False,
                    progress: Progress | None = None) -> RunResult:
    """Run ``fit`` on ``train.workers`` Ray Train workers; returns rank 0's :class:`RunResult`.

    ``progress`` (a picklable callable, e.g. :class:`raybal.training.progress.ProgressPrinter` on stdout)
    receives rank 0's per-epoch events inside its worker process.
    """
    from ray.train import FailureConfig, LoggingConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tc = config.train
    ckdir = Path(checkpoint_dir).resolve()
    (ckdir / RESULT_FILE).unlink(missing_ok=True)
    started = init_ray(address, log_to_driver=not quiet)
    try:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"config_json": config.to_json(), "trial_id": trial_id, "checkpoint_dir": str(ckdir),
                               "progress": None if quiet else progress},
            torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=tc.workers, use_gpu=tc.use_gpu,
                                         resources_per_worker={"CPU": tc.cpus_per_worker}),
            run_config=TrainRunConfig(name=f"train-{trial_id}", storage_path=str(Path(storage_path).resolve()),
                                      failure_config=FailureConfig(max_failures=tc.max_failures),
                                      logging_config=LoggingConfig(log_level="WARNING")),
        )
        trainer.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    result = read_result(ckdir)
    if result is None:
        raise RuntimeError("the Ray Train run ended without rank 0's result")
    return result
