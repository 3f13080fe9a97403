"""Training throughput and the cost of one MU evaluation relative to one plain evaluation pass.

Measured side by side in one process on the default model and data:

* training samples/s (vanilla, one epoch after a warm-up epoch) through ``raybal.train.train_step``,
  the one step ``fit()`` runs, and through ``fit()`` itself (one epoch, its evaluation and MU included);
* plain evaluation of the val split (encode + fuse) vs. a permutation-MU evaluation
  (encode once + 1 + M * n_repeats fusion passes), and vs. the naive MU that re-encodes
  the shuffled inputs (what feature shuffling saves).

    python benchmarks/bench_train.py [--quick] [--out bench_train.parquet]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
import torch.nn.functional as F

from raybal.balancing import METHODS, MethodContext
from raybal.data import load_data
from raybal.resolve import default_config, with_overrides
from raybal.train import build_for, fit, train_step
from raybal.utilization import measure


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def naive_mu(model, split, n_repeats: int) -> None:
    """Permutation MU by re-encoding shuffled inputs (the cost feature shuffling avoids)."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    for xb, yb in split.batches(500):
        F.cross_entropy(model(xb).logits, yb)
        for m in model.modalities:
            for _ in range(n_repeats):
                xs = dict(xb)
                xs[m] = xb[m][torch.randperm(len(yb), generator=g)]
                F.cross_entropy(model(xs).logits, yb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data, for a smoke run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the table as Parquet")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 1000 if args.quick else 4000
    cfg = default_config(**{"data.n_train": n, "data.n_val": n // 4, "data.n_test": n // 4})
    data = load_data(cfg.data)
    model = build_for(cfg, data)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = len(data.train) // cfg.train.batch_size
    method = METHODS.get("vanilla").obj(None, MethodContext(model=model, modalities=data.modalities, epochs=1,
                                                            steps_per_epoch=steps, seed=0))
    no_autocast = torch.autocast("cpu", enabled=False)

    def train_epoch() -> None:
        model.train()
        for xb, yb in data.train.batches(cfg.train.batch_size, shuffle=True, drop_last=True):
            train_step(model, method, opt, xb, yb, no_autocast, epoch=1)

    t_train = timed(train_epoch, repeats=1)
    one_epoch = with_overrides(cfg, {"train.epochs": 1, "train.num_threads": args.threads})
    t0 = time.perf_counter()
    fit(one_epoch, data=data)
    t_fit = time.perf_counter() - t0
    r = cfg.train.mu_repeats
    kw = dict(num_classes=data.num_classes, task=data.task)
    t_eval = timed(lambda: measure(model, data.val, modalities=(), **kw))
    t_mu = timed(lambda: measure(model, data.val, n_repeats=r, **kw))
    t_naive = timed(lambda: naive_mu(model, data.val, r))
    rows = [
        {"measure": "train samples/s (train_step)", "value": len(data.train) / t_train, "ratio_to_plain_eval": None},
        {"measure": "fit() samples/s (1 epoch, eval + MU + final)", "value": len(data.train) / t_fit,
         "ratio_to_plain_eval": None},
        {"measure": "plain eval (s)", "value": t_eval, "ratio_to_plain_eval": 1.0},
        {"measure": f"MU eval, feature shuffle, {r} repeats (s)", "value": t_mu, "ratio_to_plain_eval": t_mu / t_eval},
        {"measure": f"MU eval, input re-encode, {r} repeats (s)", "value": t_naive,
         "ratio_to_plain_eval": t_naive / t_eval},
    ]
    df = pd.DataFrame(rows)
    print(f"bench_train: {len(data.train)} train / {len(data.val)} val samples, {args.threads} threads, "
          f"model {cfg.model.name}, M = {len(data.modalities)}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        df.to_parquet(args.out)


if __name__ == "__main__":
    main()
