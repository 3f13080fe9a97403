"""The flagship study on ``synthetic_aerial``, measured and diagnosed (docs/flagship.md).

Two tables, each over several training seeds (``train.seed`` = ``data.seed`` = the seed: a new data
draw and a new initialisation, as ``calibrate_aerial.py``):

``--calibrate``: the data set's calibration, before any balancing method runs on it: per seed, EO
alone and SAR alone (the other sensor's object removed with ``data.informativeness``), vanilla
fusion's clean accuracy, EO MU share and accuracy under Gaussian EO noise of each variance of the
grid; then the means and the seed-to-seed standard deviation beside the NTIRE-21 figures it is
calibrated to (DESIGN.md §1).

Default: the study. Every configuration of ``--configs`` on every seed; per run, on the test split:

* clean accuracy and permutation MU share of EO (``final.mu.eo``);
* per noise variance: accuracy, the EO MU share under that noise, the EO encoder's relative feature
  shift ``||f(noisy) - f(clean)|| / ||f(clean)||`` and the EO branch's logit share (the norm of its
  class-centred logits over both branches': late fusion's linear head splits the logits exactly);
* accuracy with EO blacked out (what the SAR path alone carries, inside the fused model).

Then per configuration the accuracy at variance 0.12 and the mean over the grid with paired 95 %
intervals of the difference to vanilla (by seed), the clean cost, and the diagnosis: the share of
each robust measure's variance that the configuration and the seed explain (type-I sums of squares,
``raybal.analysis.effect``), and how much of the robust accuracy each per-run mechanism explains
(R² over runs).

    python benchmarks/bench_flagship.py --calibrate --seeds 0 1 2 3 4
    python benchmarks/bench_flagship.py --seeds 0 1 2 3 4
    python benchmarks/bench_flagship.py --configs vanilla mu_target@0.75 --seeds 0 1 --quick
    python benchmarks/bench_flagship.py --set data.profile=default ...   # any dotted override

``--quick`` is a smoke run (600 samples, 2 epochs, 2 noise levels); it is not recorded.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record  # noqa: E402

from raybal.analysis.effect import variance_shares  # noqa: E402
from raybal.analysis.intervals import mean_interval, paired_difference  # noqa: E402
from raybal.config import parse_override  # noqa: E402
from raybal.data import load_data  # noqa: E402
from raybal.measure.utilization import measure  # noqa: E402
from raybal.noise import corrupter  # noqa: E402
from raybal.resolve import default_config  # noqa: E402
from raybal.training.checkpoint import load_selected  # noqa: E402
from raybal.training.loop import build_for, fit  # noqa: E402

LEVELS = (0.0, 0.03, 0.06, 0.09, 0.12, 0.15)  # the gaussian corruption's registered grid (variances)
AT = 0.12  # the paper's headline level
PAPER = {"eo_only": 0.975, "sar_only": 0.849, "vanilla": 0.978, "vanilla_mu_eo": 0.9959, "vanilla@0.12": 0.737,
         "vanilla_mean": 0.819}
MU = {"balance.method": "mu_target"}
PAPER_RECIPE = {**MU, "balance.weight": "warmup", "balance.penalty_scale": "none"}


def _target(eo: float) -> dict[str, Any]:
    return {"balance.target": {"eo": eo, "sar": round(1 - eo, 6)}}


CONFIGS: dict[str, dict[str, Any]] = {
    "vanilla": {"balance.method": "vanilla"},
    **{f"mu_target@{t}": {**MU, **_target(t)} for t in (0.5, 0.65, 0.75, 0.85, 0.95)},
    **{f"paper@{t}": {**PAPER_RECIPE, **_target(t)} for t in (0.5, 0.75)},
    # the two-phase recipe: vanilla for half the epochs, then only fusion + head under the penalty
    "paper_frozen@0.75": {**PAPER_RECIPE, **_target(0.75), "balance.freeze_encoders": True,
                          "balance.pretrain_epochs": -1},
    "modality_dropout": {"balance.method": "modality_dropout"},
    "noise_augment": {"balance.method": "vanilla", "data.augment.noise": {"eo": 0.15}},
}
DEFAULT_CONFIGS = ["vanilla", "mu_target@0.5", "mu_target@0.75", "mu_target@0.95", "paper@0.75", "paper_frozen@0.75",
                   "modality_dropout", "noise_augment"]


def _config(name: str, seed: int, base: dict[str, Any]) -> Any:
    over = {**base, **CONFIGS[name], "train.seed": seed, "data.seed": seed}
    if over.get("balance.pretrain_epochs") == -1:
        over["balance.pretrain_epochs"] = max(1, int(over.get("train.epochs", 8)) // 2)
    return default_config(**over)


@torch.no_grad()
def _branch_stats(model: Any, split: Any, corrupt: Any) -> tuple[float, float]:
    """(EO feature shift, EO logit share) on one split under one corruption of EO."""
    model.eval()
    shift_num = shift_den = 0.0
    share_sum, n = 0.0, 0
    for xb, _ in split.batches(500):
        clean = model.encode(xb)
        noisy_x = corrupt(xb, torch.arange(n, n + len(clean["eo"])))
        noisy = model.encode(noisy_x)
        shift_num += float((noisy["eo"] - clean["eo"]).flatten(1).norm(dim=1).sum())
        shift_den += float(clean["eo"].flatten(1).norm(dim=1).sum())
        out = model.fuse(noisy)
        if out.modality_logits:
            norms = {m: (z - z.mean(dim=1, keepdim=True)).norm(dim=1) for m, z in out.modality_logits.items()}
            total = sum(norms.values()).clamp_min(1e-12)
            share_sum += float((norms["eo"] / total).sum())
        else:
            share_sum = math.nan
        n += len(clean["eo"])
    return shift_num / max(shift_den, 1e-12), share_sum / max(n, 1)


def diagnose(cfg: Any, levels: tuple[float, ...], mu_repeats: int) -> dict[str, Any]:
    """Train one run and measure it (module docstring)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as ck:
        result = fit(cfg, checkpoint_dir=ck)
        selected = load_selected(Path(ck) / "model.pt")
    data = load_data(cfg.data, normalizer=selected.normalizer)
    model = build_for(cfg, data)
    model.load_state_dict(selected.state)
    test = data.split("test")
    row: dict[str, Any] = {"clean_acc": result.final["final.test_accuracy"], "mu_eo": result.final["final.mu.eo"],
                           "epochs": cfg.train.epochs, "wall_s": time.perf_counter() - t0}
    for i, level in enumerate(levels):
        fn = corrupter("eo", "gaussian", level, seed=7919 * i)
        r = measure(model, test, num_classes=data.num_classes, task=data.task, n_repeats=mu_repeats, seed=0,
                    corrupt=fn)
        shift, share = _branch_stats(model, test, corrupter("eo", "gaussian", level, seed=7919 * i))
        row.update({f"acc@{level:g}": r.metric, f"mu_eo@{level:g}": r.shares["eo"], f"shift@{level:g}": shift,
                    f"logit_eo@{level:g}": share})
    row["acc_mean"] = float(np.mean([row[f"acc@{lv:g}"] for lv in levels]))
    blk = measure(model, test, num_classes=data.num_classes, task=data.task, n_repeats=1, seed=0,
                  corrupt=corrupter("eo", "blackout", 1.0, seed=1), modalities=())
    row["acc_eo_blackout"] = blk.metric
    return row


def calibrate(seeds: list[int], base: dict[str, Any], levels: tuple[float, ...]) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        b = {**base, "train.seed": seed, "data.seed": seed}
        row: dict[str, Any] = {"seed": seed}
        for name, extra in (("eo_only", {"data.informativeness": {"sar": 0.0}}),
                            ("sar_only", {"data.informativeness": {"eo": 0.0}})):
            r = fit(default_config(**b, **extra, **{"train.mu_every": 10 ** 6}))
            row[name] = r.final["final.test_accuracy"]
        rob = {"robustness.enabled": True, "robustness.modalities": ["eo"], "robustness.corruptions": ["gaussian"],
               "robustness.levels": {"gaussian": list(levels)}, "robustness.splits": ["test"],
               "robustness.measure_mu": False}
        r = fit(default_config(**b, **rob))
        row.update(vanilla=r.final["final.test_accuracy"], vanilla_mu_eo=r.final["final.mu.eo"])
        for p in r.robustness:
            row[f"vanilla@{p['level']:g}"] = p["accuracy"]
        row["vanilla_mean"] = float(np.mean([row[f"vanilla@{lv:g}"] for lv in levels]))
        print(pd.DataFrame([row]).round(3).to_string(index=False), flush=True)
        rows.append(row)
    return pd.DataFrame(rows)


def calibration_summary(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for col, paper in PAPER.items():
        key = col if col in df else None
        if key is None:
            continue
        out.append({"measure": col, "paper": paper, "mean": df[key].mean(), "std": df[key].std(ddof=1),
                    "min": df[key].min(), "max": df[key].max()})
    return pd.DataFrame(out)


def study_summary(runs: pd.DataFrame, levels: tuple[float, ...]) -> pd.DataFrame:
    """Per configuration: means, and paired differences to vanilla (by seed) with 95 % intervals."""
    at = f"acc@{AT:g}" if AT in levels else f"acc@{levels[-1]:g}"
    base = runs[runs["config"] == "vanilla"].set_index("seed")
    rows = []
    for name, g in runs.groupby("config", sort=False):
        g = g.set_index("seed")
        row: dict[str, Any] = {"config": name, "n": len(g), "mu_eo": g["mu_eo"].mean()}
        for col, label in ((at, "at_0.12"), ("acc_mean", "mean"), ("clean_acc", "clean")):
            row[label] = g[col].mean()
            if name != "vanilla" and not base.empty:
                d = paired_difference(dict(g[col]), dict(base[col]))
                row.update({f"{label}_diff": d.mean, f"{label}_low": d.low, f"{label}_high": d.high})
        rows.append(row)
    return pd.DataFrame(rows)


def diagnosis(runs: pd.DataFrame, levels: tuple[float, ...]) -> pd.DataFrame:
    """How much of each robust measure the configuration and the seed explain, and how much each per-run
    mechanism explains (R² of a line over runs)."""
    at = f"{AT:g}" if AT in levels else f"{levels[-1]:g}"
    out = []
    for target in (f"acc@{at}", "acc_mean"):
        y = runs[target].to_numpy(float)
        shares = variance_shares(y, runs["config"].to_numpy(), runs["seed"].to_numpy())
        row: dict[str, Any] = {"objective": target, "config_share": shares[0], "seed_share": shares[1],
                               "rest": shares[2]}
        for mech in ("mu_eo", f"mu_eo@{at}", "acc_eo_blackout", f"shift@{at}", f"logit_eo@{at}", "clean_acc"):
            x = runs[mech].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            r = np.corrcoef(x[ok], y[ok])[0, 1] if ok.sum() > 2 and x[ok].std() > 0 else math.nan
            row[f"r2[{mech}]"] = r * r if r == r else math.nan
            row[f"sign[{mech}]"] = math.copysign(1.0, r) if r == r else math.nan
        out.append(row)
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS), metavar="NAME",
                    help=f"configurations (default: {' '.join(DEFAULT_CONFIGS)}); known: {', '.join(CONFIGS)}")
    ap.add_argument("--calibrate", action="store_true", help="the calibration table instead of the study")
    ap.add_argument("--set", action="append", default=[], help="a dotted override key=value, e.g. data.profile=...")
    ap.add_argument("--mu-repeats", type=int, default=1, help="shuffles per MU measurement under noise")
    ap.add_argument("--name", default=None, help="the record's name (default bench_flagship[_calibration])")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = dict(parse_override(s) for s in args.set)
    levels = LEVELS
    if args.quick:
        base.update({"data.n_train": 600, "data.n_val": 200, "data.n_test": 200, "train.epochs": 2})
        levels = (0.0, AT)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    if args.calibrate:
        df = calibrate(args.seeds, base, levels)
        summary = calibration_summary(df)
        print("\ncalibration (test split; paper: NTIRE-21, DESIGN.md §1)\n" + summary.round(4).to_string(index=False))
        record(args.name or "bench_flagship_calibration", df.assign(overrides=str(base)), args.quick)
        return
    rows = []
    for seed in args.seeds:
        for name in args.configs:
            row = {"config": name, "seed": seed, **diagnose(_config(name, seed, base), levels, args.mu_repeats)}
            rows.append(row)
            show = {k: row[k] for k in ("config", "seed", "clean_acc", "mu_eo", f"acc@{AT:g}", "acc_mean",
                                        "acc_eo_blackout", "wall_s") if k in row}
            print(pd.DataFrame([show]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    runs = pd.DataFrame(rows)
    print("\nper configuration (test split; *_diff: paired difference to vanilla by seed, 95 % CI low/high)")
    print(study_summary(runs, levels).round(4).to_string(index=False))
    print("\ndiagnosis: variance shares (type-I, configuration first) and R² of each mechanism over runs")
    print(diagnosis(runs, levels).round(3).to_string(index=False))
    for name, g in runs.groupby("config", sort=False):
        iv = mean_interval(g[f"acc@{AT:g}"].tolist()) if f"acc@{AT:g}" in g else None
        if iv is not None and iv.n > 1:
            print(f"{name}: accuracy at {AT:g}: {iv.format(3)}; seed std {g[f'acc@{AT:g}'].std(ddof=1):.3f}")
    record(args.name or "bench_flagship", runs.assign(overrides=str(base)), args.quick)


if __name__ == "__main__":
    main()
