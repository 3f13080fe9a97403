"""The same answer on any number of workers (DESIGN.md §5.11; issue 12 finding 6).

Per method, a real 2-worker Ray Train run on CPU against plain ``fit`` (1 worker), same seed and
global batch: the parameters after the run's steps agree within float tolerance (every method
here is deterministic given the seed; measured differences are ~1e-6), and so do test accuracy,
MU, the train-split rows and the methods' per-epoch scalars. Without cross-rank batch statistics
(per-rank BatchNorm) the parameters differed by 0.1 after 2 epochs.

One local Ray and one Ray Train run serve the module: its two workers run every case in turn through
``raybal.training.distributed._worker``, the per-worker function of ``fit_distributed`` (starting a worker group
took ~20 s a case on 2 cores; the runs themselves under a second). ``tests/test_distributed.py`` covers
``fit_distributed`` itself (storage, failures, the result handed back).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from raybal.training import checkpoint
from raybal.training.loop import fit

MMTM = {"model.name": "mmtm", "model.fuse_after": [2, 3]}
# SGD where Adam amplifies rounding: a rank's half batch runs other CPU kernels than the whole batch, and
# Adam's m / sqrt(v) turns the float noise on gradients ~1e-9 into lr-sized steps. On an AMD EPYC without
# AVX-512 mu_target and inforeg ended 1.4e-3 apart with Adam, 3e-6 and 5e-7 apart with SGD (lr 0.05).
SGD = {"train.optimizer": "sgd", "train.lr": 0.05}
CASES = {
    "vanilla": {},
    # warmup 0.25: lambda at lambda_max from step 4 of 12. With the default 0.5 this run amplifies float
    # noise whatever the workers: one worker with 1e-6 added to one initial weight tensor ends 3.5e-3 apart
    # (5e-6 at 0.25), and 2 workers ended 3.6e-3 from 1 with the same lambda at every step. A rank bug
    # shows at either warm-up; only the amplification depends on it.
    "mu_target": {"balance.target": {"eo": 0.6, "sar": 0.4}, "balance.lambda_0": 1.0, "balance.warmup": 0.25,
                  **MMTM, **SGD},
    "mu_target_frozen": {"balance.method": "mu_target", "balance.target": {"eo": 0.6, "sar": 0.4},
                         "balance.freeze_encoders": True, "balance.pretrain_epochs": 1, "train.epochs": 3},
    "greedy_guided": {"balance.alpha": 0.0, **MMTM},  # alpha 0: re-balance from epoch 2 whatever d is
    "ogm_ge": {},
    # The drop masks are drawn for the global batch. SGD, not Adam: zeroed inputs leave some parameters with
    # gradients ~1e-9 whose float rounding differs with the rank layout (and the CPU), and Adam's m / sqrt(v)
    # turns that noise into lr-sized steps (2e-3 apart after 1 epoch here; SGD: 1e-7, the masks agree exactly).
    "modality_dropout": {"balance.p": 0.5, "train.optimizer": "sgd"},
    "pmr": {"balance.proto_fraction": 0.4},  # prototypes from the first 2 global batches, split across ranks
    "mmpareto": {},  # its own gradient averaging (no DDP) before the conflict test
    "agm": {},
    "inforeg": {**SGD},  # scores summed over the global batch, Fisher sums of the averaged gradients
    "mla": {"model.name": "sum", "model.shared_head": True, "model.fusion": "entropy"},  # M steps per batch
}


@pytest.fixture(scope="module")
def two_worker_runs(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """case -> (config, checkpoint dir, rank 0's RunResult, or a message naming the run's failure when the
    case left no result), every case trained by the same two Ray Train workers, one after another."""
    import pickle

    import ray
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raybal.training.distributed import RESULT_FILE, init_ray

    root = tmp_path_factory.mktemp("two_workers")
    cfgs = {name: _config(name, 2) for name in CASES}
    loops = [{"config_json": cfg.to_json(), "trial_id": name, "checkpoint_dir": str(root / name), "progress": None}
             for name, cfg in cfgs.items()]

    def every_case(cfg: dict) -> None:  # a closure: pickled by value into the workers
        from raybal.training.distributed import _worker

        for loop in cfg["loops"]:  # an error ends the run (a rank that went on would wait on the other)
            _worker(loop)

    started = init_ray(None)
    failure = None
    try:
        TorchTrainer(every_case, train_loop_config={"loops": loops}, torch_config=TorchConfig(backend="gloo"),
                     scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                     run_config=TrainRunConfig(name="invariance", storage_path=str(root / "ray"))).fit()
    except Exception as e:  # noqa: BLE001 - the cases before the failing one still count
        failure = f"{type(e).__name__}: {e}"
    finally:
        if started:
            ray.shutdown()
    out = {}
    for name, cfg in cfgs.items():
        res = root / name / RESULT_FILE
        out[name] = (cfg, root / name, pickle.loads(res.read_bytes()) if res.is_file() else
                     f"no result: the run failed at or before this case: {failure}")
    return out


def _config(name: str, workers: int):  # noqa: ANN202
    over = {"balance.method": name, **CASES[name], "train.workers": workers, "train.cpus_per_worker": 1,
            "data.n_train": 192, "train.batch_size": 32, "robustness.enabled": False}
    return tiny_config(**over)


def _last_state(d: Path, cfg) -> dict[str, torch.Tensor]:  # noqa: ANN001
    st = checkpoint.load_last(d / checkpoint.LAST, cfg)
    assert st is not None
    return st["model"]


@pytest.mark.parametrize("name", list(CASES))
def test_two_workers_give_the_one_worker_answer(tmp_path: Path, two_worker_runs: dict, name: str) -> None:
    two_cfg, two_dir, two = two_worker_runs[name]
    assert not isinstance(two, str), f"{name}: the 2-worker run failed:\n{two}"
    one_cfg = _config(name, 1)
    assert one_cfg.digest() == two_cfg.digest()  # the same run, on a different number of workers
    one = fit(one_cfg, checkpoint_dir=tmp_path / "one")
    s1, s2 = _last_state(tmp_path / "one", one_cfg), _last_state(two_dir, two_cfg)
    assert s1.keys() == s2.keys()
    worst = max(float((s1[k].double() - s2[k].double()).abs().max()) for k in s1 if s1[k].is_floating_point())
    assert worst < 1e-4, f"{name}: parameters differ by {worst:.3g} after {one_cfg.train.epochs} epochs"
    f1, f2 = one.final, two.final
    assert abs(f1["final.test_accuracy"] - f2["final.test_accuracy"]) <= 0.02
    for m in ("eo", "sar"):
        assert abs(f1[f"final.mu.{m}"] - f2[f"final.mu.{m}"]) <= 0.05
    # the train-split rows cover every rank's samples, like one worker's
    tr1 = [r for r in one.epochs if r["split"] == "train"]
    tr2 = [r for r in two.epochs if r["split"] == "train"]
    for a, b in zip(tr1, tr2):
        assert abs(a["loss"] - b["loss"]) < 1e-3 and abs(a["accuracy"] - b["accuracy"]) < 1e-9
    # the method's per-epoch scalars agree too (e.g. mu_target's penalty, greedy's re-balancing share)
    for a, b in zip(tr1, tr2):
        for k in set(a) - {"trial_id", "epoch", "split", "loss", "accuracy"}:
            if isinstance(a[k], float):
                assert abs(a[k] - b[k]) < 1e-3, (k, a[k], b[k])
