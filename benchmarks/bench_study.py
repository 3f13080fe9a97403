"""Study overhead and search efficiency (issue 5).

1. Per-trial overhead: N one-worker trials run one at a time through ``raybal.run_study``
   (Tune + Optuna + the Parquet recorder) against the same N ``fit()`` calls in this process.
   overhead per trial = (study wall - Ray start-up - sum of the trials' own fit time) / N,
   with Ray's start-up reported apart. Target: < 2 s per one-worker trial.
2. Search efficiency on the ``aerial_noise`` objective (mean validation accuracy under EO
   noise): an exhaustive grid over the EO target (lambda_max fixed) against ASHA + Optuna
   over the target and lambda_max. Reported: the best validation objective of each, the
   test robust accuracy of the trial each would pick, and the compute the study used as a
   fraction of the grid's (epochs trained).
3. Replicate-aware early stopping (issue 36): the quickstart study (``ntire21`` aerial profile,
   ``mu_target`` over the EO target and lambda_max, 3 seeds per configuration, the vanilla baseline)
   with more configurations, run with FIFO and with ASHA (``ReplicateASHA``: a configuration judged by
   the mean of its seeds at each rung), the same sampler seed; then ``raybal confirm --top 1`` on each.
   Reported: the epochs each trained (the compute), its wall time, the winner's search-time objective
   and its confirmed one on 3 fresh seeds (the winner's curse, measured), and the paired difference to
   vanilla on those seeds.
4. Samplers at equal budget (issue 36): the same study (``mu_target`` over its target, lambda_max and the
   learning rate; 9 configurations x 2 seeds beside the vanilla baseline, FIFO) with ``study.sampler`` =
   TPE, GP and random, each repeated with 3 sampler seeds, on ``synthetic_aerial`` (the ``ntire21``
   profile) and on ``colored_digits``; every study's winner confirmed on 3 fresh seeds. Reported per
   sampler: the winner's search-time objective, its confirmed objective (mean and spread over the
   repetitions) and the gap between the two (the winner's curse).

    python benchmarks/bench_study.py [--quick] [--only overhead efficiency replicates samplers]
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _grid import run_grid  # noqa: E402
from _record import record  # noqa: E402

from raybal.study.driver import run_study  # noqa: E402
from raybal.study.space import study_from_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def overhead(out: Path, n: int, quick: bool) -> pd.DataFrame:
    import ray
    import torch

    from raybal.training.loop import fit

    raw = tomllib.loads((ROOT / "studies" / "quickstart.toml").read_text())
    raw["data"].update({"n_train": 600 if quick else 1500, "n_val": 200, "n_test": 200})
    raw["train"]["epochs"] = 3
    raw["study"].update({"num_samples": n, "max_concurrent": 1, "scheduler": "fifo", "constraints": []})
    raw["search"] = {"balance.target.eo": {"uniform": [0.5, 0.95]}}
    raw["balance"] = {"method": "mu_target", "target": {"eo": 0.75, "sar": 0.25}}
    study = study_from_dict(raw)
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, logging_level="WARNING")
    t_init = time.perf_counter() - t
    t = time.perf_counter()
    res = run_study(study, out / "overhead", quiet=True)
    t_study = time.perf_counter() - t
    ray.shutdown()
    trials = res.trials
    torch.set_num_threads(1)  # what a one-worker trial gets (cpus_per_trial = 1)
    t_fit = []
    for _, row in trials.iterrows():
        cfg = study.space.trial_config(study.base_raw, {"balance.target.eo": row["balance.target.eo"]})
        t0 = time.perf_counter()
        fit(cfg)
        t_fit.append(time.perf_counter() - t0)
    in_trial = float(trials["wall_s"].sum())
    return pd.DataFrame([
        {"measure": "ray.init (local, once per study)", "seconds": t_init},
        {"measure": f"study wall, {n} trials one at a time", "seconds": t_study},
        {"measure": "sum of fit() inside the trials", "seconds": in_trial},
        {"measure": "sum of the same fit() alone in-process", "seconds": float(np.sum(t_fit))},
        {"measure": "overhead per trial (study wall - fit in trials) / N", "seconds": (t_study - in_trial) / n},
        {"measure": "overhead per trial vs fit() alone", "seconds": (t_study - float(np.sum(t_fit))) / n},
    ])


def efficiency(out: Path, quick: bool, grid_points: int, samples: int) -> pd.DataFrame:
    raw = tomllib.loads((ROOT / "studies" / "aerial_noise.toml").read_text())
    size = {"n_train": 800, "n_val": 300, "n_test": 300} if quick else {"n_train": 2000, "n_val": 500, "n_test": 1000}
    raw["data"].update(size)
    raw["train"]["epochs"] = 3 if quick else 6
    raw["study"].update({"num_samples": samples, "grace_period": 2, "name": "bench_aerial_noise"})
    study = study_from_dict(raw)
    targets = np.linspace(0.4, 0.95, grid_points)
    grid = {f"grid-eo{t:.3f}": study.space.trial_config(study.base_raw, {"balance.target.eo": float(t),
                                                                        "balance.lambda_max": 10.0})
            for t in targets}
    t0 = time.perf_counter()
    g = run_grid(grid, out / "grid")
    t_grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = run_study(study, out / "study", quiet=True)
    t_study = time.perf_counter() - t0
    s = res.trials
    obj = study.objectives[0].metric
    ok = s[s["status"] == "ok"]
    epochs_study = res.epochs[res.epochs["split"] == "val"].groupby("trial_id").size().sum()
    epochs_grid = len(grid) * study.base.train.epochs
    gb, sb = g.loc[g[obj].idxmax()], ok.loc[ok[obj].idxmax()]
    return pd.DataFrame([
        {"search": f"exhaustive grid ({len(grid)} EO targets, lambda_max 10)",
         "best_target_eo": gb["balance.target.eo"],
         "val_objective": gb[obj], "test_robust_acc": gb["robust.test_mean_accuracy"], "epochs_trained": epochs_grid,
         "wall_s": t_grid, "compute_vs_grid": 1.0},
        {"search": f"ASHA + Optuna ({samples} trials, target + lambda_max)", "best_target_eo": sb["balance.target.eo"],
         "val_objective": sb[obj], "test_robust_acc": sb["robust.test_mean_accuracy"], "epochs_trained": epochs_study,
         "wall_s": t_study, "compute_vs_grid": epochs_study / epochs_grid},
    ])


def replicates(out: Path, quick: bool, samples: int) -> pd.DataFrame:
    """FIFO against replicate-aware ASHA on the same study, each winner confirmed on fresh seeds."""
    import ray

    from raybal.analysis.best import best_trial
    from raybal.analysis.confirm import confirm

    raw = tomllib.loads((ROOT / "studies" / "quickstart.toml").read_text())
    if quick:  # a smoke run: too little data for the quickstart's accuracy constraint
        raw["data"].update({"n_train": 600, "n_val": 200, "n_test": 200})
        raw["train"]["epochs"] = 4
        raw["study"]["constraints"] = []
    raw["study"].update({"num_samples": samples, "grace_period": 2, "reduction_factor": 2})
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, logging_level="WARNING")
    rows = []
    try:
        for scheduler in ("fifo", "asha"):
            raw["study"]["scheduler"] = scheduler
            raw["study"]["name"] = f"bench_replicates_{scheduler}"
            study = study_from_dict(raw)
            d = out / f"replicates-{scheduler}"
            t0 = time.perf_counter()
            res = run_study(study, d, quiet=True)
            t_study = time.perf_counter() - t0
            search = res.search()
            epochs = int((search.epochs["split"] == "val").sum())
            stopped = int((search.trials["status"] == "stopped").sum())
            t0 = time.perf_counter()
            confirm(d, top=1, seeds=3, quiet=True)
            t_confirm = time.perf_counter() - t0
            b = best_trial(d, importance=None)
            c = b.confirmed
            diff = c.vs_baseline.diff if c and c.vs_baseline else None
            rows.append({
                "scheduler": "FIFO" if scheduler == "fifo" else "replicate-aware ASHA",
                "configurations": study.configurations, "runs": len(search.trials), "stopped_runs": stopped,
                "epochs_trained": epochs, "study_wall_s": t_study, "best_config": b.config_id,
                "search_value": b.value, "search_low": b.interval.low, "search_high": b.interval.high,
                "confirmed_value": c.interval.mean if c and c.interval else np.nan,
                "confirmed_low": c.interval.low if c and c.interval else np.nan,
                "confirmed_high": c.interval.high if c and c.interval else np.nan,
                "winners_curse": c.gap if c else np.nan,
                "vs_vanilla_confirmed": diff.mean if diff else np.nan,
                "vs_vanilla_low": diff.low if diff else np.nan, "vs_vanilla_high": diff.high if diff else np.nan,
                "confirm_wall_s": t_confirm})
            print(f"  {rows[-1]['scheduler']}: {epochs} epochs, {stopped} runs stopped, {t_study:.0f} s; best "
                  f"{b.value:.4f} at search time, {rows[-1]['confirmed_value']:.4f} confirmed", flush=True)
    finally:
        ray.shutdown()
    df = pd.DataFrame(rows)
    df["compute_vs_fifo"] = df["epochs_trained"] / df["epochs_trained"].iloc[0]
    return df


SAMPLERS = ("tpe", "gp", "random")


def sampler_study(data: str, quick: bool) -> dict:
    """The samplers' shared study on ``data`` (a raw study file): small runs, so 18 studies fit a session."""
    raw = tomllib.loads((ROOT / "studies" / "quickstart.toml").read_text())
    raw["data"].update({"n_train": 400 if quick else 600, "n_val": 200, "n_test": 300})
    raw["train"].update({"epochs": 2 if quick else 3})
    raw["study"].update({"num_samples": 3 if quick else 9, "repeats": 2, "scheduler": "fifo", "constraints": [],
                         "max_concurrent": 2})
    raw["search"] = {"balance.lambda_max": {"loguniform": [1.0, 30.0]}, "train.lr": {"loguniform": [3e-4, 1e-2]}}
    if data == "colored_digits":  # its shifted test punishes the colour shortcut: robustness to a noisy colour
        raw["data"] = {"name": "colored_digits", "seed": 0}
        raw["balance"]["target"] = {"gray": 0.5, "color": 0.5}
        raw["robustness"]["modalities"] = ["color"]
        raw["search"]["balance.target.gray"] = {"uniform": [0.2, 0.9]}
    else:
        raw["search"]["balance.target.eo"] = {"uniform": [0.5, 0.95]}
    return raw


def samplers(out: Path, quick: bool, reps: int, datasets: list[str]) -> pd.DataFrame:
    """TPE, GP and random at the same budget, ``reps`` sampler seeds each; each winner confirmed."""
    import ray

    from raybal.analysis.best import best_trial
    from raybal.analysis.confirm import confirm

    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, logging_level="WARNING")
    rows = []
    try:
        for data in datasets:
            raw = sampler_study(data, quick)
            for sampler in SAMPLERS:
                for rep in range(reps):
                    raw["study"].update({"sampler": sampler, "seed": rep, "name": f"bench_{data}_{sampler}_{rep}"})
                    study = study_from_dict(raw)
                    d = out / f"samplers-{data}-{sampler}-{rep}"
                    t0 = time.perf_counter()
                    run_study(study, d, quiet=True)
                    t_study = time.perf_counter() - t0
                    confirm(d, top=1, seeds=3, quiet=True)
                    b = best_trial(d, importance=None)
                    c = b.confirmed
                    rows.append({"data": data, "sampler": sampler, "repetition": rep,
                                 "budget": f"{study.configurations} x {study.settings.repeats}",
                                 "winner": "baseline" if b.is_baseline else "searched", "search_value": b.value,
                                 "confirmed_value": c.interval.mean if c and c.interval else np.nan,
                                 "winners_curse": c.gap if c else np.nan, "study_wall_s": t_study})
                    print(f"  {data} {sampler} #{rep}: {b.value:.4f} at search time, "
                          f"{rows[-1]['confirmed_value']:.4f} confirmed ({t_study:.0f} s)", flush=True)
    finally:
        ray.shutdown()
    return pd.DataFrame(rows)


def sampler_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per data set and sampler: the mean over repetitions with the 95 % t half-width (and the worst)."""
    from scipy import stats

    def half(v: pd.Series) -> float:
        v = v.dropna()
        return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else np.nan

    rows = []
    for (data, sampler), g in df.groupby(["data", "sampler"], sort=False):
        rows.append({"data": data, "sampler": sampler, "repetitions": len(g), "budget": g["budget"].iloc[0],
                     "baseline_won": int((g["winner"] == "baseline").sum()) if "winner" in g else np.nan,
                     "search_value": g["search_value"].mean(), "confirmed_value": g["confirmed_value"].mean(),
                     "confirmed_half_width": half(g["confirmed_value"]), "confirmed_worst": g["confirmed_value"].min(),
                     "winners_curse": g["winners_curse"].mean(), "study_wall_s": g["study_wall_s"].mean()})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int, default=6, help="trials for the overhead measurement")
    ap.add_argument("--grid-points", type=int, default=8)
    ap.add_argument("--samples", type=int, default=10, help="study trials for the efficiency comparison")
    ap.add_argument("--out", default="benchmarks/out/study")
    ap.add_argument("--skip-efficiency", action="store_true")
    ap.add_argument("--only", nargs="*", choices=("overhead", "efficiency", "replicates", "samplers"),
                    default=["overhead", "efficiency", "replicates", "samplers"], help="sections to run")
    ap.add_argument("--reps", type=int, default=3, help="sampler seeds per sampler (samplers)")
    ap.add_argument("--data", nargs="*", default=["synthetic_aerial", "colored_digits"],
                    choices=("synthetic_aerial", "colored_digits"), help="data sets of the samplers comparison")
    ap.add_argument("--configs", type=int, default=8, help="configurations of the replicates comparison")
    args = ap.parse_args()
    if args.skip_efficiency:
        args.only = [s for s in args.only if s != "efficiency"]
    out = Path(args.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)  # the benchmark's own scratch directory: studies start fresh
    out.mkdir(parents=True)
    n = 3 if args.quick else args.trials
    pd.set_option("display.width", 200)
    if "overhead" in args.only:
        ov = overhead(out, n, args.quick)
        print("\nPer-trial overhead (one-worker trials run fit() in the Tune trial process)")
        print(ov.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        ov.to_parquet(out / "overhead.parquet")
    if "replicates" in args.only:
        rep = replicates(out, args.quick, 3 if args.quick else args.configs)
        print("\nReplicate-aware ASHA against FIFO on the quickstart study (3 seeds per configuration, objective "
              "robust.val_mean_accuracy); each winner confirmed on 3 fresh seeds")
        print(rep.T.to_string(header=False, float_format=lambda v: f"{v:.4f}"))
        rep.to_parquet(out / "replicates.parquet")
        record("bench_study_replicates", rep, args.quick)
    if "samplers" in args.only:
        per = samplers(out, args.quick, 1 if args.quick else args.reps, args.data)
        per.to_parquet(out / "samplers.parquet")
        summary = sampler_summary(per)
        print("\nSamplers at equal budget (configurations x seeds, FIFO), each study's winner confirmed on 3 fresh "
              "seeds; mean over sampler seeds (objective robust.val_mean_accuracy)")
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        record("bench_study_samplers", summary, args.quick)
    if "efficiency" in args.only:
        eff = efficiency(out, args.quick, 3 if args.quick else args.grid_points, 4 if args.quick else args.samples)
        print("\nSearch efficiency on the aerial_noise objective (robust.val_mean_accuracy)")
        print(eff.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        eff.to_parquet(out / "efficiency.parquet")
    print(f"tables written under {out}")


if __name__ == "__main__":
    main()
