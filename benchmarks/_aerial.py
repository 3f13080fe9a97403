"""The run grid of ``bench_noise_robustness.py``.

Vanilla and ``mu_target`` at EO targets 0.5, 0.6, 0.75, 0.9 on ``synthetic_aerial`` (late
fusion, 8 epochs, default selection), 3 seeds each, every run swept under Gaussian EO noise of
variance 0, 0.03, ..., 0.15 on the validation and test splits. Runs are stored in the results
directory, so a second invocation trains nothing new. (``bench_target_tracking.py`` has its own
five-data-set grid.)
"""

from __future__ import annotations

import argparse

from raybal.config import RunConfig, parse_override
from raybal.resolve import default_config

TARGETS = (0.5, 0.6, 0.75, 0.9)
LEVELS = (0.0, 0.03, 0.06, 0.09, 0.12, 0.15)


def add_args(ap: argparse.ArgumentParser, default_out: str) -> None:
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), help="EO target fractions")
    ap.add_argument("--results", default=default_out, help="results directory shared by the aerial benchmarks")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override applied to every run (e.g. balance.lambda_max=5 for mu_target runs)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 target, small data, 3 epochs")
    ap.add_argument("--out", default=None, help="write the table as Parquet here (default: beside --results)")


def grid(args: argparse.Namespace) -> dict[str, RunConfig]:
    seeds, targets = (args.seeds[:1], [0.75]) if args.quick else (args.seeds, args.targets)
    base = {
        "robustness.enabled": True, "robustness.modalities": ["eo"], "robustness.corruptions": ["gaussian"],
        "robustness.levels": {"gaussian": list(LEVELS)}, "robustness.splits": ["val", "test"],
        "robustness.measure_mu": False,
    }
    if args.quick:
        base.update({"data.n_train": 1000, "data.n_val": 300, "data.n_test": 300, "train.epochs": 3})
    extra = dict(parse_override(s) for s in args.set)
    runs: dict[str, RunConfig] = {}
    for seed in seeds:
        seeded = {**base, "data.seed": seed, "train.seed": seed}
        runs[f"vanilla-s{seed}"] = default_config(**seeded)
        for t in targets:
            runs[f"mu{t:.2f}-s{seed}"] = default_config(**seeded, **{
                "balance.method": "mu_target", "balance.target": {"eo": t, "sar": round(1.0 - t, 10)}}, **extra)
    return runs


def label(row) -> str:  # noqa: ANN001 - a pandas row
    if row["balance.method"] == "vanilla":
        return "vanilla"
    return f"mu_target {row['balance.target.eo']:.2f}"
