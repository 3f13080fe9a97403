"""Ray Train overhead and scaling (issue 4), side by side in one run.

* plain ``fit()`` in this process vs the same run on Ray Train with 1 worker: the ratio of the
  training time inside the worker to the plain run (target <= 1.15x for a ~1 minute run), with
  the worker-group start-up and ``ray.init`` reported apart;
* 1 vs 2 workers (each worker ``train.cpus_per_worker`` = 1 thread; on a 2-core machine the
  2-worker run has the whole machine): wall time and speed-up, with test accuracy beside it;
* on a CUDA machine (``--gpu``): samples/s per GPU.

    python benchmarks/bench_distributed.py [--quick] [--gpu]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from raybal.resolve import default_config, with_overrides
from raybal.training.distributed import fit_distributed, init_ray
from raybal.training.loop import fit

sys.path.insert(0, str(Path(__file__).parent))
from _record import record  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="run the Ray Train rows on GPUs (one per worker)")
    ap.add_argument("--out", default="benchmarks/out/distributed")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own scratch directory
    size = {"data.n_train": 1000, "train.epochs": 2} if args.quick else {"data.n_train": 4000, "train.epochs": 8}
    base = default_config(**size, **{"train.cpus_per_worker": 1, "train.use_gpu": args.gpu})
    n_samples = base.data.params.n_train * base.train.epochs
    rows = []

    torch.set_num_threads(1)
    fit(default_config(**{**size, "train.epochs": 1}))  # warm the data cache and the kernels
    t = time.perf_counter()
    plain = fit(with_overrides(base, {"train.num_threads": 1}))
    t_plain = time.perf_counter() - t
    rows.append({"run": "plain fit(), 1 thread", "workers": 1, "wall_s": t_plain, "train_s": plain.wall_s,
                 "startup_s": 0.0, "test_acc": plain.final["final.test_accuracy"]})

    t = time.perf_counter()
    init_ray(None)
    t_init = time.perf_counter() - t
    for n in (1, 2):
        cfg = with_overrides(base, {"train.workers": n})
        t = time.perf_counter()
        r = fit_distributed(cfg, trial_id=f"bench{n}", checkpoint_dir=out / f"w{n}", storage_path=out / "ray",
                            quiet=True)
        wall = time.perf_counter() - t
        rows.append({"run": f"Ray Train, {n} worker{'s' if n > 1 else ''}", "workers": n, "wall_s": wall,
                     "train_s": r.wall_s, "startup_s": wall - r.wall_s, "test_acc": r.final["final.test_accuracy"]})
    import ray

    ray.shutdown()
    df = pd.DataFrame(rows)
    df["train_vs_plain"] = df["train_s"] / t_plain
    df["samples_per_s"] = n_samples / df["train_s"]
    if args.gpu:
        df["samples_per_s_per_gpu"] = df["samples_per_s"] / df["workers"]
    one = df.loc[df["run"] == "Ray Train, 1 worker"].iloc[0]
    two = df.loc[df["workers"] == 2].iloc[0]
    pd.set_option("display.width", 200)
    print(f"bench_distributed: {base.data.params.n_train} samples x {base.train.epochs} epochs, "
          f"global batch {base.train.batch_size}, {'GPU' if args.gpu else 'CPU'}; ray.init {t_init:.1f}s (apart)")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nRay Train 1 worker vs plain fit(): {one.train_s / t_plain:.3f}x training time "
          f"(+ {one.startup_s:.1f}s worker-group start-up); 2 vs 1 workers: {one.train_s / two.train_s:.2f}x speed-up")
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "distributed.parquet")
    record("bench_distributed", df, args.quick)
    print(f"table written to {out / 'distributed.parquet'}")


if __name__ == "__main__":
    main()
