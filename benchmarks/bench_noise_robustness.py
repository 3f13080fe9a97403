"""Noise robustness of vanilla vs ``mu_target`` on ``synthetic_aerial`` (issue 3, benchmark 2).

The Sensors 2024 headline in shape: accuracy under Gaussian EO noise of variance 0, 0.03, ...,
0.15, mean ± sd over 3 seeds, for vanilla and ``mu_target`` at EO targets 0.5, 0.6, 0.75, 0.9.
Goal: the best target beats vanilla by >= 5 points at variance 0.12 and on the mean over
levels, at a clean-accuracy cost of <= 3 points. The "best target" is picked on the
*validation* sweep (what a user can do); the test numbers are then reported for it, and the
target that is best on test is shown beside it for reference only.

Its runs are stored under ``--results`` (``_aerial.py``'s grid): a second invocation trains
nothing. About 9 minutes on 2 CPU cores from scratch.

    python benchmarks/bench_noise_robustness.py
    python benchmarks/bench_noise_robustness.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _aerial import add_args, grid, label  # noqa: E402
from _grid import mean_sd, run_grid  # noqa: E402
from _record import record  # noqa: E402

from raybal.results.tables import load_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap, "benchmarks/out/aerial")
    args = ap.parse_args()
    torch.set_num_threads(2)
    trials = run_grid(grid(args), args.results)
    rob = load_results(args.results).robustness
    rob = rob[rob["trial_id"].isin(trials["trial_id"]) & (rob["modality"] == "eo") & (rob["corruption"] == "gaussian")]
    names = {r["trial_id"]: label(r) for _, r in trials.iterrows()}
    rob = rob.assign(method=rob["trial_id"].map(names))

    def per_level(split: str) -> pd.DataFrame:
        return rob[rob["split"] == split].groupby(["method", "level"])["accuracy"]

    test = per_level("test")
    table = test.apply(mean_sd).unstack("level")
    table.columns = [f"v={c:.2f}" for c in table.columns]
    run_mean = rob.groupby(["split", "method", "trial_id"])["accuracy"].mean()  # mean over levels, per run
    table["mean over levels"] = run_mean["test"].groupby("method").apply(mean_sd)
    pd.set_option("display.width", 220)
    print("\nTest accuracy under Gaussian EO noise (variance v), mean ± sd over seeds")
    print(table.to_string())

    val_score = run_mean["val"].groupby("method").mean().drop("vanilla", errors="ignore")
    test_mean = test.mean().unstack("level")
    lvl = min(test_mean.columns, key=lambda c: abs(c - 0.12))
    clean = min(test_mean.columns)
    overall = run_mean["test"].groupby("method").mean()
    rows = []
    for role, method in (("picked on val", val_score.idxmax() if len(val_score) else None),
                         ("best on test (reference)", overall.drop("vanilla", errors="ignore").idxmax()
                          if len(overall) > 1 else None)):
        if method is None or "vanilla" not in overall:
            continue
        rows.append({"choice": role, "method": method,
                     f"gain@{lvl:.2f} (pts)": 100 * (test_mean.loc[method, lvl] - test_mean.loc["vanilla", lvl]),
                     "gain mean over levels (pts)": 100 * (overall[method] - overall["vanilla"]),
                     "clean cost (pts)": 100 * (test_mean.loc["vanilla", clean] - test_mean.loc[method, clean])})
    goals = pd.DataFrame(rows)
    if not goals.empty:
        print("\nBest target vs vanilla (goal: gains >= 5 pts, clean cost <= 3 pts)")
        print(goals.round(2).to_string(index=False))
    out = Path(args.out or Path(args.results) / "noise_robustness.parquet")
    table.reset_index().to_parquet(out)
    record("bench_noise_robustness", table.reset_index(), args.quick)
    print(f"table written to {out}")


if __name__ == "__main__":
    main()
