"""Training-step cost of each balancing method relative to vanilla (issue 3, benchmark 4).

All variants run side by side in one process on the same data and batches, interleaved in
rounds (so machine noise hits them alike), each through ``raybal.training.steps.train_step`` — the one
training step ``fit()`` uses. Reported: median seconds per step and the ratio to vanilla on the
same model. Targets: ``mu_target`` (feature shuffle) <= 1.10x vanilla on 2 modalities; the
input re-encoding variant shows what feature shuffling saves (a prototype measured ~3x).
``greedy_*`` need the MMTM fusion and are compared with vanilla on MMTM.

    python benchmarks/bench_method_cost.py [--quick] [--out cost.parquet]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import torch

from raybal.balancing import METHODS, MethodContext
from raybal.data import load_data
from raybal.resolve import default_config
from raybal.training.loop import build_for, seed_everything
from raybal.training.steps import train_step

sys.path.insert(0, str(Path(__file__).parent))
from _record import record  # noqa: E402

VARIANTS = [  # (name, model, balance overrides, baseline name)
    ("vanilla", "late", {}, "vanilla"),
    ("mu_target (feature shuffle)", "late", {"balance.method": "mu_target",
                                             "balance.target": {"eo": 0.75, "sar": 0.25}}, "vanilla"),
    ("mu_target (input re-encode)", "late", {"balance.method": "mu_target", "balance.shuffle": "inputs",
                                             "balance.target": {"eo": 0.75, "sar": 0.25}}, "vanilla"),
    ("ogm_ge", "late", {"balance.method": "ogm_ge"}, "vanilla"),
    ("pmr", "late", {"balance.method": "pmr"}, "vanilla"),
    ("mmpareto", "late", {"balance.method": "mmpareto"}, "vanilla"),
    ("agm", "late", {"balance.method": "agm"}, "vanilla"),
    ("inforeg", "late", {"balance.method": "inforeg"}, "vanilla"),
    ("modality_dropout", "late", {"balance.method": "modality_dropout"}, "vanilla"),
    ("dgl", "late", {"balance.method": "dgl"}, "vanilla"),
    ("vanilla (sum)", "sum", {}, "vanilla (sum)"),
    ("reconboost", "sum", {"balance.method": "reconboost"}, "vanilla (sum)"),
    ("vanilla (sum, shared head)", "sum", {"model.shared_head": True}, "vanilla (sum, shared head)"),
    ("mla", "sum", {"balance.method": "mla", "model.shared_head": True, "model.fusion": "entropy"},
     "vanilla (sum, shared head)"),
    ("vanilla (mmtm)", "mmtm", {}, "vanilla (mmtm)"),
    ("greedy_guided", "mmtm", {"balance.method": "greedy_guided"}, "vanilla (mmtm)"),
    ("greedy_random", "mmtm", {"balance.method": "greedy_random"}, "vanilla (mmtm)"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds, for a smoke run")
    ap.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/out/method_cost.parquet")
    args = ap.parse_args()
    steps, rounds = (5, 2) if args.quick else (args.steps, args.rounds)
    torch.set_num_threads(args.threads)
    base = {"data.n_train": 2048, "data.n_val": 256, "data.n_test": 256, "train.epochs": 8}
    data = load_data(default_config(**base).data)
    bs = default_config(**base).train.batch_size
    batches = list(data.train.batches(bs, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True))

    runners = {}
    for name, model_name, extra, _ in VARIANTS:
        cfg = default_config(**base, **{"model.name": model_name}, **extra)
        seed_everything(0)
        model = build_for(cfg, data)
        method = METHODS.get(cfg.balance.method).obj(cfg.balance.params, MethodContext(
            model=model, modalities=data.modalities, epochs=cfg.train.epochs, steps_per_epoch=len(batches), seed=0))
        method.on_epoch_start(cfg.train.epochs)  # fully active: lambda at lambda_max, past start epochs
        if method.training_pass:  # PMR's prototypes (their per-epoch pass, ~proto_fraction of an epoch's
            model.eval()          # forwards in eval mode, is not part of the step time)
            method.on_training_data(model, iter(batches))
        model.train()
        method.on_train_mode(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        runners[name] = (model, method, opt)

    times: dict[str, list[float]] = {name: [] for name in runners}
    pos = 0
    for r in range(rounds + 1):  # round 0 is a warm-up
        for name, (model, method, opt) in runners.items():
            for i in range(steps):
                xb, yb = batches[(pos + i) % len(batches)]
                t = time.perf_counter()
                train_step(model, method, opt, xb, yb, nullcontext())
                if r > 0:
                    times[name].append(time.perf_counter() - t)
        pos += steps
    med = {name: statistics.median(v) for name, v in times.items()}
    rows = [{"variant": name, "model": model_name, "ms_per_step": 1000 * med[name],
             "ratio": med[name] / med[baseline], "baseline": baseline}
            for name, model_name, _, baseline in VARIANTS]
    df = pd.DataFrame(rows)
    print(f"bench_method_cost: batch {bs}, {len(data.modalities)} modalities, {args.threads} threads, "
          f"{rounds} rounds x {steps} steps per variant (median step time)")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(args.out)
    record("bench_method_cost", df, args.quick)
    print(f"table written to {args.out}")


if __name__ == "__main__":
    main()
