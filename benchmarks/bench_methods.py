"""A fair method comparison (issue 16): every balancing method tuned with the same budget.

Runs ``studies/methods_compare.toml`` (``study.per_method``: each method gets ``num_samples``
configurations over its own knobs, each configuration ``repeats`` seeds, beside a vanilla baseline
with the same seeds) on two data sets, then prints per method the tuned best configuration's
numbers as means over its seeds with 95 % t intervals:

* ``synthetic_aerial`` (objective: validation accuracy under EO Gaussian noise, mean over 0 /
  0.06 / 0.12): clean test accuracy, test accuracy at EO noise variance 0.12, test MU shares;
* ``colored_digits`` (objective: validation loss; validation is the training distribution, where
  accuracy saturates at 1.0; the colour shortcut is random in test): test accuracy, test MU shares.

``vs vanilla`` is the paired (by seed) difference of the objective to the baseline. Each data set's
study lives in ``--out/<data set>`` and is resumed when the benchmark is run again; the table is
also written as Parquet.

    python benchmarks/bench_methods.py [--quick] [--out benchmarks/out/methods]
    python benchmarks/bench_methods.py --defaults   # every method at its default knobs, 3 seeds, no search
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd

from raybal.analysis.best import best_per_method, config_table
from raybal.analysis.intervals import mean_interval
from raybal.results.tables import load_results
from raybal.study.driver import resume_study, run_study
from raybal.study.space import study_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from _record import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOISY = "robust.test_accuracy.eo.gaussian.0.12"


def studies(quick: bool) -> dict[str, dict]:
    raw = tomllib.loads((ROOT / "studies" / "methods_compare.toml").read_text())
    aerial = copy.deepcopy(raw)
    digits = copy.deepcopy(raw)
    digits["data"] = {"name": "colored_digits", "seed": 0}
    digits.pop("robustness")
    # Validation is carved from the *training* distribution (the colour shortcut holds there, as in Wu et
    # al.), so validation accuracy saturates at 1.0 for every configuration and cannot rank them; the
    # validation loss still does (test numbers are reported, never selected on).
    digits["study"]["objective"] = "final.val_loss"
    search = digits["search"]
    search["balance.target.color"] = search.pop("balance.target.eo")
    search["balance.target.color"]["uniform"] = [0.2, 0.8]
    if quick:
        for s in (aerial, digits):
            s["study"].update(num_samples=1, repeats=2)
            s["train"]["epochs"] = 2
            s["search"]["balance.end_epoch"]["int"] = [0, 2]
        aerial["data"].update(n_train=300, n_val=200, n_test=200, image_size=16)
        digits["data"]["max_samples"] = 600
    return {"synthetic_aerial": aerial, "colored_digits": digits}


def run(name: str, raw: dict, out: Path) -> Path:
    d = out / name
    t0 = time.perf_counter()
    meta = d / "study.json"
    if meta.is_file() and '"status": "finished"' in meta.read_text():
        print(f"{name}: finished study found in {d}; reading it")
    elif meta.is_file():
        resume_study(d, quiet=True)
    else:
        run_study(study_from_dict(raw, source=f"# bench_methods: {name}"), d, quiet=True)
    print(f"{name}: {len(load_results(d).trials)} runs in {d} ({time.perf_counter() - t0:.0f} s)")
    return d


def cell(values: pd.Series) -> str:
    iv = mean_interval(pd.to_numeric(values, errors="coerce").dropna().tolist())
    return f"{iv.mean:.3f} ± {(iv.high - iv.low) / 2:.3f}" if iv.defined else f"{iv.mean:.3f}"


def table(name: str, d: Path) -> pd.DataFrame:
    res = load_results(d)
    t = res.trials.drop_duplicates(["config_id", "train.seed"])
    per = best_per_method(d)
    mods = [c.split(".", 2)[2] for c in t.columns if c.startswith("final.mu.")]
    configs = config_table(res.trials, res.meta["best"]["metric"])
    rows = []
    for _, r in per.iterrows():
        if pd.isna(r.get("config_id")):
            rows.append({"data": name, "method": r["method"], "note": r.get("note")})
            continue
        runs = t[(t["config_id"] == r["config_id"]) & (t["status"] == "ok")]
        row = {"data": name, "method": r["method"],
               "configs": int(configs.loc[configs["balance.method"] == r["method"], "config_id"].nunique()),
               "seeds": int(r["n"]), "objective": f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]",
               "vs vanilla": ("baseline" if r["verdict"] == "baseline" else
                              f"{r['vs_baseline']:+.3f} [{r['vs_baseline.low']:+.3f}, {r['vs_baseline.high']:+.3f}]"),
               "verdict": r["verdict"], "test acc": cell(runs["final.test_accuracy"])}
        if NOISY in runs:
            row["test acc, EO noise 0.12"] = cell(runs[NOISY])
        for m in mods:
            row[f"MU {m}"] = cell(runs[f"final.mu.{m}"])
        row.update({"objective_mean": r["mean"], "objective_low": r["low"], "objective_high": r["high"],
                    "vs_baseline": r["vs_baseline"]})
        rows.append(row)
    return pd.DataFrame(rows)


# The model each method runs on when not searched (the comparison study's choice): greedy re-balancing needs
# MMTM's gates, MLA a shared head (and its entropy-weighted test-time fusion), ReconBoost the sum of its
# learners' logits; the rest late fusion.
MODEL_FOR = {"greedy_guided": {"model.name": "mmtm"}, "greedy_random": {"model.name": "mmtm"},
             "mla": {"model.name": "sum", "model.shared_head": True, "model.fusion": "entropy"},
             "reconboost": {"model.name": "sum"}}
TARGET_FOR = {"synthetic_aerial": {"eo": 0.75, "sar": 0.25}, "colored_digits": {"gray": 0.5, "color": 0.5}}


def default_runs(name: str, raw: dict, seeds: int) -> dict:
    """Every method of the comparison at its default knobs, ``seeds`` seeds each: trial id -> RunConfig."""
    from raybal.config import set_dotted
    from raybal.resolve import config_from_dict

    base = {k: v for k, v in raw.items() if k not in ("study", "search")}
    runs = {}
    for m in raw["search"]["balance.method"]["choice"]:
        for seed in range(seeds):
            r = copy.deepcopy(base)
            r["balance"] = {"method": m, **({"target": TARGET_FOR[name]} if m == "mu_target" else {})}
            for k, v in {**MODEL_FOR.get(m, {}), "train.seed": seed}.items():
                set_dotted(r, k, v)
            runs[f"{m}-s{seed}"] = config_from_dict(r)
    return runs


def defaults_table(name: str, trials: pd.DataFrame, cost: pd.DataFrame | None) -> pd.DataFrame:
    mods = [c.split(".", 2)[2] for c in trials.columns if c.startswith("final.mu.")]
    rows = []
    for m, g in trials.groupby("balance.method", sort=False):
        g = g[g["status"] == "ok"]
        row = {"data": name, "method": m, "seeds": len(g), "test acc": cell(g["final.test_accuracy"])}
        if NOISY in g:
            row["test acc, EO noise 0.12"] = cell(g[NOISY])
        for mod in mods:
            row[f"MU {mod}"] = cell(g[f"final.mu.{mod}"])
        util = [f"final.val_cond_util.{mod}" for mod in mods[:2]]
        if all(c in g for c in util) and g[util].notna().all().all():  # Wu's imbalance: gated models only
            row["Wu |d_util| (val)"] = cell((g[util[0]] - g[util[1]]).abs())
        match = cost[(cost["variant"] == m) | cost["variant"].str.startswith(f"{m} (")] if cost is not None else None
        if match is not None and not match.empty:  # mu_target: its default, the feature-shuffle variant
            row["step cost vs vanilla"] = f"{float(match['ratio'].iloc[0]):.2f}x"
        rows.append(row)
    return pd.DataFrame(rows)


def run_defaults(args: argparse.Namespace, out: Path) -> None:
    """Issue 17's table: every method at its default knobs, 3 seeds, no search (``--defaults``)."""
    from _grid import run_grid

    cost_path = ROOT / "benchmarks" / "out" / "method_cost.parquet"
    cost = pd.read_parquet(cost_path) if cost_path.is_file() else None
    frames = []
    for name, raw in studies(args.quick).items():
        if name in args.data:
            runs = default_runs(name, raw, 2 if args.quick else 3)
            frames.append(defaults_table(name, run_grid(runs, out / f"defaults_{name}"), cost))
    df = pd.concat(frames, ignore_index=True)
    print("\nbench_methods --defaults: every method at its default knobs (mean ± 95 % t half-width over seeds)"
          + ("" if cost is not None else "; run bench_method_cost.py first for the step-cost column"))
    for name, g in df.groupby("data", sort=False):
        print(f"\n{name}")
        print(g[[c for c in g.columns if g[c].notna().any()]].drop(columns="data").to_string(index=False))
    path = out / "bench_methods_defaults.parquet"
    df.to_parquet(path)
    record("bench_methods_defaults", df, args.quick)
    print(f"\ntable written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 configuration x 2 seeds per method, tiny data")
    ap.add_argument("--out", default=None, help="results root (default benchmarks/out/methods[_quick])")
    ap.add_argument("--data", nargs="*", default=["synthetic_aerial", "colored_digits"])
    ap.add_argument("--defaults", action="store_true", help="every method at its default knobs, 3 seeds, no search "
                    "(with the step cost of bench_method_cost.py's last table)")
    args = ap.parse_args()
    out = Path(args.out or ROOT / "benchmarks" / "out" / ("methods_quick" if args.quick else "methods"))
    if args.defaults:
        run_defaults(args, out)
        return
    frames = []
    for name, raw in studies(args.quick).items():
        if name in args.data:
            frames.append(table(name, run(name, raw, out)))
    df = pd.concat(frames, ignore_index=True)
    shown = [c for c in df.columns if c not in ("objective_mean", "objective_low", "objective_high", "vs_baseline",
                                                "note")]
    print("\nbench_methods: each method's tuned best (mean ± 95 % t half-width over its seeds; objective and "
          "vs vanilla as [95 % CI])")
    for name, g in df.groupby("data", sort=False):
        print(f"\n{name}")
        print(g[[c for c in shown if g[c].notna().any()]].drop(columns="data").to_string(index=False))
    path = out / "bench_methods.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path)
    record("bench_methods", df, args.quick)
    print(f"\ntable written to {path}")


if __name__ == "__main__":
    main()
