"""The robustness protocol on the methods a study compares (issue 34).

Every configuration below is trained with 3 seeds on the calibrated aerial profile
(``synthetic_aerial``, ``profile = "ntire21"``), on ``colored_digits`` and on the segmentation variant
of ``synthetic_aerial`` (U-Net, per-pixel masks, mIoU; smaller: 800 training chips, 200 test chips), then
swept by the standard suite (``studies/robustness_suite.toml``: every corruption at severities 1-5 on
the modalities whose shape it fits, missing rates 0.1-0.5, one joint fault) on the test split. From
each directory's ``robustness_summary.parquet``, with vanilla as the baseline paired by seed, it prints
per data set and configuration:

* the clean metric, mRA, relative robustness, mCE and effective robustness over all corruptions: the
  mean over seeds with its 95 % t interval, and ``boot±``, the mean half-width of the runs' own 95 %
  bootstrap intervals over test samples (how much of the spread the test set's size alone explains);
* mRA per corrupted modality and corruption (mean over seeds);
* where each method helps and where it hurts against vanilla: the curves whose CE's bootstrap interval
  lies wholly below 1 (helps) or wholly above 1 (hurts) on every seed, the mean CE at least 2 % from 1.

    python benchmarks/bench_robustness_protocol.py [--quick] [--data synthetic_aerial colored_digits segmentation]

``--quick`` is a smoke run (small data, 2 epochs, 2 seeds); it is not recorded.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _grid import default_jobs, run_grid  # noqa: E402
from _record import record  # noqa: E402

from raybal.analysis.intervals import mean_interval  # noqa: E402
from raybal.resolve import default_config  # noqa: E402
from raybal.results.robust_summary import ALL, summary_table  # noqa: E402
from raybal.results.tables import load_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA: dict[str, dict[str, Any]] = {
    "synthetic_aerial": {"data.name": "synthetic_aerial", "data.profile": "ntire21", "data.n_train": 1500,
                         "data.n_val": 500, "data.n_test": 500, "train.epochs": 6},
    "colored_digits": {"data.name": "colored_digits", "train.epochs": 6},
    "segmentation": {"data.name": "synthetic_aerial", "data.task": "segmentation", "model.name": "unet",
                     "data.n_train": 800, "data.n_val": 200, "data.n_test": 200, "train.epochs": 6},
}
# the modality each data set leans on (targets, noise augmentation) and the other
MODALITIES = {"synthetic_aerial": ("eo", "sar"), "colored_digits": ("color", "gray"), "segmentation": ("eo", "sar")}


def configs(name: str) -> dict[str, dict[str, Any]]:
    lead, other = MODALITIES[name]

    def target(t: float) -> dict[str, Any]:
        return {"balance.method": "mu_target", "balance.target": {lead: t, other: round(1 - t, 6)}}

    return {"vanilla": {"balance.method": "vanilla"}, "mu_target@0.5": target(0.5), "mu_target@0.75": target(0.75),
            "modality_dropout": {"balance.method": "modality_dropout"},
            "noise_augment": {"balance.method": "vanilla", "data.augment.noise": {lead: 0.15}},
            "mmpareto": {"balance.method": "mmpareto"}, "inforeg": {"balance.method": "inforeg"}}


def robustness(name: str) -> dict[str, Any]:
    suite = tomllib.loads((ROOT / "studies" / "robustness_suite.toml").read_text())["robustness"]
    lead, other = MODALITIES[name]
    over = {f"robustness.{k}": v for k, v in suite.items() if k != "joint"}
    over["robustness.joint"] = {"clouds_and_speckle": {lead: "clouds", other: "speckle"}}
    return {"robustness.enabled": True, **over}


def summarise(d: Path, runs: dict[str, Any]) -> pd.DataFrame:
    """The directory's summary with vanilla as the seed-paired baseline (the grid's runs have no role)."""
    res = load_results(d)
    t = res.trials[res.trials["trial_id"].isin(list(runs))].copy()
    t["config"] = t["trial_id"].str.rsplit("-s", n=1).str[0]
    t["replicate"] = t["trial_id"].str.rsplit("-s", n=1).str[1].astype(int)
    t["role"] = t["config"].map(lambda c: "baseline" if c == "vanilla" else "search")
    metric = "miou" if "final.test_miou" in t else "accuracy"
    s = summary_table(t, res.robustness[res.robustness["trial_id"].isin(list(runs))], metric)
    return s.merge(t[["trial_id", "config", "replicate"]], on="trial_id")


def table(s: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for cfg, g in s[s["modality"] == ALL].groupby("config", sort=False):
        row: dict[str, Any] = {"config": cfg, "seeds": len(g)}
        for k in ("clean", "mra", "rel_robustness", "ce", "effective_robustness"):
            iv = mean_interval(g[k].dropna().tolist())
            row[k] = iv.format(3) if iv is not None and iv.n > 1 else (f"{g[k].mean():.3f}" if g[k].notna().any()
                                                                        else "-")
            half = ((g[f"{k}_hi"] - g[f"{k}_lo"]) / 2).mean()
            row[f"{k} boot±"] = f"{half:.3f}" if half == half else "-"
        rows.append(row)
    return pd.DataFrame(rows)


MATERIAL = 0.02  # a verdict needs the mean CE 2 % away from vanilla's too: paired intervals of two nearly
# identical models are tight around a difference too small to matter


def verdicts(s: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: the curves (modality:corruption) where it beats vanilla on every seed, its CE's
    bootstrap interval wholly below 1, and those where it loses on every seed (wholly above 1); either
    with a mean CE at least ``MATERIAL`` away from 1."""
    curves = s[(s["modality"] != ALL) & s["ce"].notna()].assign(point=lambda x: x["modality"] + ":" + x["corruption"])
    rows = []
    for cfg, g in curves.groupby("config", sort=False):
        by = g.groupby("point")
        below, above, mean = by["ce_hi"].max() < 1, by["ce_lo"].min() > 1, by["ce"].mean()
        helps, hurts = below & (mean <= 1 - MATERIAL), above & (mean >= 1 + MATERIAL)
        rows.append({"config": cfg, "helps": ", ".join(helps.index[helps]) or "-",
                     "hurts": ", ".join(hurts.index[hurts]) or "-"})
    return pd.DataFrame(rows)


def per_corruption(s: pd.DataFrame) -> pd.DataFrame:
    curves = s[s["modality"] != ALL].assign(point=lambda x: x["modality"] + ":" + x["corruption"])
    return curves.pivot_table(index="config", columns="point", values="mra", aggfunc="mean", sort=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=None, help="results root (default benchmarks/out/robustness[_quick])")
    ap.add_argument("--jobs", type=int, default=default_jobs())
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = Path(args.out or ROOT / "benchmarks" / "out" / ("robustness_quick" if args.quick else "robustness"))
    seeds = args.seeds[:2] if args.quick else args.seeds
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 60)
    recorded = []
    for name in args.data:
        base = {**DATA[name], **robustness(name)}
        if args.quick:
            base.update({"train.epochs": 2, **({"data.n_train": 300, "data.n_val": 100, "data.n_test": 100}
                                              if name != "colored_digits" else {})})
        runs = {f"{cfg}-s{seed}": default_config(**{**base, **over, "train.seed": seed})
                for cfg, over in configs(name).items() for seed in seeds}
        d = out / name
        run_grid(runs, d, jobs=args.jobs)
        s = summarise(d, runs)
        print(f"\n{name}: over all corruptions (test; mean and 95 % t interval over seeds; ce and "
              f"effective_robustness against vanilla, paired by seed)")
        print(table(s).to_string(index=False))
        print(f"\n{name}: mRA per corrupted modality and corruption (mean over seeds)")
        print(per_corruption(s).round(3).to_string())
        print(f"\n{name}: against vanilla, CE's bootstrap interval wholly below 1 (helps) or above 1 (hurts) on "
              "every seed")
        print(verdicts(s).to_string(index=False))
        recorded.append(s[s["modality"] == ALL].assign(data=name))  # per run; the curves stay in the directory
    record("bench_robustness_protocol", pd.concat(recorded, ignore_index=True), args.quick)


if __name__ == "__main__":
    main()
