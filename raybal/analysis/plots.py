"""Standard figures over the Parquet tables (DESIGN.md §4): ``raybal report`` and the notebooks.

Every function takes a :class:`raybal.results.tables.Results` (or the tables it holds) and returns a
matplotlib Figure, or raises :class:`NoData` with a one-line reason when the tables lack what
the figure needs (a single run has no search; a study whose methods have no target has no targets).
Colours come from seaborn's colour-blind-safe palette.
"""

from __future__ import annotations

from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from raybal.analysis.intervals import is_bounded
from raybal.analysis.runs import trial_labels
from raybal.config.tasks import metric_of_columns
from raybal.noise import CORRUPTIONS, is_severity
from raybal.results.schema import target_columns
from raybal.results.tables import Results

PALETTE = "colorblind"
BAND = 0.05


class NoData(Exception):
    """The tables do not hold what this figure needs (a note, not an error)."""


def _style() -> None:
    sns.set_theme(style="whitegrid", palette=PALETTE, context="notebook")


def metric_of(res: Results) -> str:
    return metric_of_columns([*res.epochs.columns, *res.trials.columns])


def mu_over_epochs(res: Results, split: str = "val") -> plt.Figure:
    """1. MU share per modality over epochs, one line per trial; each target as a ±0.05 band."""
    res = res.search()  # the study's runs, not a confirmation's (raybal confirm)
    u = res.utilization
    if u.empty or "mu" not in u:
        raise NoData("utilization.parquet is empty")
    u = u[u["split"] == split]
    if u.empty:
        raise NoData(f"no per-epoch MU on the {split} split")
    _style()
    labels = trial_labels(res.trials)
    u = u.assign(run=u["trial_id"].map(labels).fillna(u["trial_id"]) + " · " + u["trial_id"].astype(str).str[:8])
    mods = list(dict.fromkeys(u["modality"]))
    fig, axes = plt.subplots(1, len(mods), figsize=(5.5 * len(mods), 4.2), sharey=True, squeeze=False)
    tcols = target_columns(res.trials.columns)
    for ax, m in zip(axes[0], mods, strict=True):
        col = tcols.get(m)
        if col is not None:
            for t in sorted(res.trials[col].dropna().unique()):
                ax.axhspan(t - BAND, t + BAND, color="0.5", alpha=0.12, lw=0)
                ax.axhline(t, color="0.4", lw=0.8, ls=":")
        sns.lineplot(data=u[u["modality"] == m], x="epoch", y="mu", hue="run", marker="o", ax=ax,
                     legend=ax is axes[0][-1], palette=PALETTE)
        ax.set(title=f"{m}", xlabel="epoch", ylabel="MU share (fraction of total)", ylim=(-0.02, 1.02))
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8, title="trial")
    fig.suptitle(f"Modality utilization over training ({split} split; grey band = target ±{BAND})")
    fig.tight_layout()
    return fig


def _bounded_band(values: Any) -> tuple[float, float]:
    """seaborn's errorbar for a [0, 1] metric: the 95 % logit-scale t interval of the mean
    (:func:`raybal.analysis.intervals.bounded_interval`), inside [0, 1]; none for one run."""
    from raybal.analysis.intervals import bounded_interval

    iv = bounded_interval(list(values))
    return (iv.low, iv.high) if iv.defined else (iv.mean, iv.mean)


def accuracy_vs_noise(res: Results, split: str | None = None) -> plt.Figure:
    """2. Accuracy vs corruption level per corrupted modality, one curve per method / target / training
    augmentation (mean and 95 % t interval over its runs: the seeds of a configuration, or trials sharing a
    label); a study's baseline is its own curve and band, labelled "(baseline)"."""
    res = res.search()  # the study's runs, not a confirmation's (raybal confirm)
    r = res.robustness
    if r.empty:
        raise NoData("robustness.parquet is empty (no [robustness] sweep was run)")
    split = split or ("test" if (r["split"] == "test").any() else str(r["split"].iloc[0]))
    metric = metric_of(res)
    r = r[r["split"] == split]
    labels = trial_labels(res.trials)
    if "role" in res.trials:  # the study's reference: its own curve and band, named so
        base = set(res.trials.loc[res.trials["role"] == "baseline", "trial_id"])
        labels = labels.where(~labels.index.isin(base), labels + " (baseline)")
    r = r.assign(method=r["trial_id"].map(labels).fillna(r["trial_id"]), panel=r["modality"] + " · " + r["corruption"])
    _style()
    panels = list(dict.fromkeys(r["panel"]))
    order = sorted(r["method"].unique())
    # The legend goes below the panels, so that one panel is not squeezed beside it; at most 4 panels a
    # row (a full suite sweeps a dozen corruptions and more).
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.5, 4.8 * ncols), 4.2 * nrows + 0.8), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for ax, p in zip(flat, panels):
        sns.lineplot(data=r[r["panel"] == p], x="level", y=metric, hue="method", hue_order=order, marker="o",
                     errorbar=_bounded_band, ax=ax, legend=ax is axes[0][0], palette=PALETTE)
        corruption = p.split(" · ")[1]
        unit = {"gaussian": "noise variance", "speckle": "variance", "missing": "rate"}.get(
            corruption, "severity" if corruption in CORRUPTIONS and is_severity(corruption) else "level")
        ax.set(title=p, xlabel=f"{corruption} {unit}", ylabel=f"{split} {metric}", ylim=(0, 1.02))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if axes[0][0].get_legend() is not None:
        axes[0][0].get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    rows = -(-len(labels) // 3)
    fig.suptitle(f"Robustness: {split} {metric} under corruption\n"
                 "mean over runs, 95 % interval (t interval on the logit scale)", fontsize=11)
    fig.tight_layout(rect=(0, (0.04 + 0.045 * rows) / nrows, 1, 1 - 0.06 / nrows))
    return fig


def achieved_vs_target(res: Results) -> plt.Figure:
    """3. Achieved test MU share vs the target, per modality, with the identity line and a ±0.10 band."""
    res = res.search()  # the study's runs, not a confirmation's (raybal confirm)
    t = res.trials
    t = t[t["status"] == "ok"] if "status" in t else t
    tcols = target_columns(t.columns)
    rows = [{"modality": m, "target": r[c], "achieved": r.get(f"final.mu.{m}")}
            for m, c in tcols.items() for _, r in t.iterrows() if pd.notna(r[c])]
    df = pd.DataFrame(rows).dropna() if rows else pd.DataFrame()
    if df.empty:
        raise NoData("no finished trial with a target utilization (a method with a `target`)")
    _style()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    x = np.linspace(0, 1, 2)
    ax.fill_between(x, x - 0.10, x + 0.10, color="0.5", alpha=0.15, lw=0, label="±0.10")
    ax.plot(x, x, color="0.3", lw=1, ls="--", label="achieved = target")
    sns.scatterplot(data=df, x="target", y="achieved", hue="modality", style="modality", s=60, ax=ax, palette=PALETTE)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="target utilization (fraction)", ylabel="achieved test MU share",
           title="Achieved vs target utilization")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _configs(res: Results, objective: str) -> pd.DataFrame:
    """One row per study configuration: means over its ok seeds, the objective's 95 % interval."""
    from raybal.analysis.best import config_table

    c = config_table(res.trials, objective)
    c = c[(c["n_ok"] > 0) & (c["n_failed"] == 0) & (c["n_stopped"] == 0)]
    return c.assign(label=c["trial_id"].map(trial_labels(res.trials)),
                    err_lo=c[objective] - c[f"{objective}.low"], err_hi=c[f"{objective}.high"] - c[objective])


def _errorbars(ax: Any, df: pd.DataFrame, x: str, y: str, **kw: Any) -> None:
    """Points with asymmetric error bars (none where the interval is undefined: a single seed)."""
    ax.errorbar(df[x], df[y], yerr=[df["err_lo"].fillna(0), df["err_hi"].fillna(0)], fmt="o", capsize=3, **kw)


def search(res: Results, objective: str | None = None) -> plt.Figure:
    """4. The objective vs each searched parameter, one point per configuration (the mean over its seeds,
    95 % interval as error bars), the baseline as a line with its interval as a band; the Pareto front of
    configuration means for multi-objective studies."""
    res = res.search()  # the study's runs, not a confirmation's (raybal confirm)
    from raybal.analysis.best import pareto_front, searched_columns

    t = res.trials
    objectives = res.meta.get("objectives", [])
    objective = objective or (objectives[0]["metric"] if objectives else None)
    params = [c for c in searched_columns(t, res.meta) if c in t and pd.api.types.is_numeric_dtype(t[c])
              or (c in t and c.endswith(".method"))]
    targets = [c for c in params if c in target_columns(t.columns).values()]
    params = [c for c in params if c not in targets[1:]] if len(targets) == 2 else params  # M = 2: one is 1 - other
    if res.kind != "study" or not objective or objective not in t or not params:
        raise NoData("not a study with searched parameters (a single run has no search)")
    conf = _configs(res, objective)
    base = conf[conf["role"] == "baseline"]
    multi = len(objectives) > 1
    n = len(params) + (1 if multi else 0)
    _style()
    colors = sns.color_palette(PALETTE)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
    for ax, p in zip(axes[0], params, strict=False):
        methods = list(dict.fromkeys(conf["balance.method"])) if "balance.method" in conf else [None]
        for i, m in enumerate(methods):
            sub = conf[(conf["balance.method"] == m) & conf[p].notna()] if m is not None else conf[conf[p].notna()]
            if not sub.empty:
                _errorbars(ax, sub, p, objective, color=colors[i % len(colors)], label=m)
        if not base.empty and pd.api.types.is_numeric_dtype(conf[p]):
            b = base.iloc[0]
            ax.axhline(b[objective], color="0.3", ls="--", lw=1, label=f"baseline ({b['balance.method']})")
            if pd.notna(b[f"{objective}.low"]):
                ax.axhspan(b[f"{objective}.low"], b[f"{objective}.high"], color="0.5", alpha=0.12, lw=0)
        numeric = conf[p].dropna()
        if p.endswith("lambda_max") or (numeric.dtype.kind == "f" and numeric.min() > 0
                                        and numeric.max() / numeric.min() > 50):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel=p, ylabel=objective, title=f"{objective} vs {p.rsplit('.', 1)[-1]}")
        if ax is axes[0][0]:
            ax.legend(fontsize=7)
    if multi:
        ax = axes[0][-1]
        (m1, d1), (m2, d2) = [(o["metric"], o["mode"]) for o in objectives[:2]]
        sns.scatterplot(data=conf, x=m1, y=m2, ax=ax, color="0.6", s=40, label="configurations (means)")
        front = pareto_front(conf, [(m1, d1), (m2, d2)]).sort_values(m1)
        ax.plot(front[m1], front[m2], "o-", color=colors[3], label="Pareto front")
        ax.set(xlabel=f"{m1} ({d1})", ylabel=f"{m2} ({d2})", title="Pareto front")
        ax.legend(fontsize=8)
    seeds = int(conf["n_ok"].max()) if not conf.empty else 0
    stopped = int((t["status"] == "stopped").sum())
    how = "a t interval on the logit scale" if is_bounded(objective) else "a t interval"
    fig.suptitle(f"Search: {len(conf)} configurations, mean and 95 % interval ({how}) over {seeds} "
                 f"seed{'s' * (seeds != 1)}"
                 + (f" ({stopped} runs stopped early, not shown)" if stopped else ""))
    fig.tight_layout()
    return fig


def configurations(res: Results, objective: str | None = None) -> plt.Figure:
    """5. Every configuration's objective, ranked: the mean over its seeds with its 95 % t interval; the
    baseline's mean and interval as a band (is the best distinguishable from it?)."""
    res = res.search()  # the study's runs, not a confirmation's (raybal confirm)
    objectives = res.meta.get("objectives", [])
    objective = objective or (objectives[0]["metric"] if objectives else None)
    if res.kind != "study" or not objective or objective not in res.trials:
        raise NoData("not a study (a single run has no configurations to compare)")
    mode = objectives[0]["mode"] if objectives and objectives[0]["metric"] == objective else "max"
    conf = _configs(res, objective).sort_values(objective, ascending=mode == "max").reset_index(drop=True)
    if conf.empty:
        raise NoData("no configuration whose every seed finished ok")
    _style()
    colors = sns.color_palette(PALETTE)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.38 * len(conf)))
    is_base = conf["role"] == "baseline"
    for flag, color, name in ((False, colors[0], "configuration"), (True, colors[3], "baseline")):
        sub = conf[is_base == flag]
        ax.errorbar(sub[objective], sub.index, xerr=[sub["err_lo"].fillna(0), sub["err_hi"].fillna(0)], fmt="o",
                    capsize=3, color=color, label=name)
    if is_base.any():
        b = conf[is_base].iloc[0]
        if pd.notna(b[f"{objective}.low"]):
            ax.axvspan(b[f"{objective}.low"], b[f"{objective}.high"], color=colors[3], alpha=0.1, lw=0)
    ax.set_yticks(conf.index, [f"{lab} · {cid[:6]} (n={n})" for lab, cid, n in
                               zip(conf["label"], conf["config_id"], conf["n_ok"], strict=True)], fontsize=8)
    how = "logit-scale t interval" if is_bounded(objective) else "t interval"
    ax.set(xlabel=f"{objective} ({mode})", title=f"Configurations: mean and 95 % {how} over seeds")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def utilization_effect(res: Results, objective: str | None = None) -> plt.Figure:
    """7. Does utilization predict the objective? One point per run (the objective against the achieved MU
    share of the searched target's modality), coloured by seed; the least-squares line with its 95 %
    confidence band, and the shares of variance explained by utilization, the configuration and the seed
    (:mod:`raybal.analysis.effect`)."""
    res = res.search()  # the study's runs, not a confirmation's (raybal confirm)
    from raybal.analysis.effect import STEP, effect_runs, targeted_modality
    from raybal.analysis.effect import utilization_effect as effect_of
    from raybal.analysis.intervals import t_quantile

    objectives = res.meta.get("objectives", [])
    objective = objective or (objectives[0]["metric"] if objectives else None)
    modality = targeted_modality(res.trials, res.meta) if res.kind == "study" else None
    if not objective or modality is None:
        raise NoData("not a study that searches a target utilization")
    effect = effect_of(res.trials, objective, modality)
    runs = effect_runs(res.trials, objective, modality)
    if effect is None:
        raise NoData(f"fewer than 4 finished runs, or no spread in the achieved {modality} share or the objective")
    _style()
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    seeds = sorted(runs["seed"].unique())
    colors = sns.color_palette(PALETTE, max(len(seeds), 1))
    for i, sd in enumerate(seeds):
        sub = runs[runs["seed"] == sd]
        ax.scatter(sub["share"], sub["value"], color=colors[i % len(colors)], s=36, label=f"seed {sd}",
                   edgecolor="white", lw=0.5)
    x, y = runs["share"].to_numpy(), runs["value"].to_numpy()
    b = effect.slope / STEP
    grid = np.linspace(x.min(), x.max(), 50)
    fit = y.mean() + b * (grid - x.mean())
    resid = y - (y.mean() + b * (x - x.mean()))
    s2 = float((resid ** 2).sum()) / (len(x) - 2)
    sxx = float(((x - x.mean()) ** 2).sum())
    half = t_quantile(0.975, len(x) - 2) * np.sqrt(s2 * (1 / len(x) + (grid - x.mean()) ** 2 / sxx))
    ax.plot(grid, fit, color="0.2", lw=1.5, label="least squares")
    ax.fill_between(grid, fit - half, fit + half, color="0.5", alpha=0.15, lw=0, label="95 % band (the line)")
    shares = ("" if effect.share_config != effect.share_config else  # NaN: one run per configuration
              f"; configuration {effect.share_config * 100:.0f} %, seed {effect.share_seed * 100:.0f} %")
    ax.set(xlabel=f"achieved MU share of {modality} (final)", ylabel=objective,
           title=f"utilization explains {effect.r2_utilization * 100:.0f} %{shares}")
    ax.legend(fontsize=7, ncol=2)
    scale = 100 if is_bounded(objective) else 1
    fig.text(0.01, -0.02, f"slope {effect.slope * scale:+.2f}{' points' if scale == 100 else ''} per +{STEP:g} of "
             f"{modality} share, 95 % CI [{effect.slope_low * scale:+.2f}, {effect.slope_high * scale:+.2f}]; "
             f"{effect.n_runs} runs, {effect.n_configs} configurations, {effect.n_seeds} seeds", fontsize=8)
    fig.tight_layout()
    return fig


def greedy(res: Results) -> plt.Figure:
    """6. Wu et al.: learning-speed imbalance over training and the final conditional utilization imbalance."""
    res = res.search()  # the study's runs, not a confirmation's (raybal confirm)
    e, t = res.epochs, res.trials
    if "speed_imbalance" not in e or e["speed_imbalance"].dropna().empty:
        raise NoData("no learning-speed records (no trial of a method that tracks conditional learning speed)")
    labels = trial_labels(t)
    tr = e[(e["split"] == "train") & e["speed_imbalance"].notna()]
    tr = tr.assign(run=tr["trial_id"].map(labels).fillna(tr["trial_id"]) + " · " + tr["trial_id"].astype(str).str[:8])
    col = "final.val_cond_util."  # Wu's rate on validation (the training distribution), gated fusions only
    mods = [c[len(col):] for c in t.columns if c.startswith(col) and t[c].notna().any()]
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    sns.lineplot(data=tr, x="epoch", y="speed_imbalance", hue="run", marker="o", ax=axes[0], palette=PALETTE)
    axes[0].axhline(0, color="0.4", lw=0.8)
    axes[0].set(xlabel="epoch", ylabel="d = s_0 - s_1 (log10 speed ratio)",
                title="Conditional learning-speed imbalance (Wu 2022)")
    axes[0].legend(fontsize=7, title="trial")
    if len(mods) >= 2:
        d = t.assign(method=t["trial_id"].map(labels),
                     d_util=(t[f"{col}{mods[0]}"] - t[f"{col}{mods[1]}"]).abs())
        sns.barplot(data=d, x="method", y="d_util", errorbar="sd", ax=axes[1], palette=PALETTE, hue="method",
                    legend=False)
        axes[1].set(xlabel="method", ylabel=f"|u({mods[1]}|{mods[0]}) - u({mods[0]}|{mods[1]})|",
                    title="Conditional utilization imbalance (validation)")
        axes[1].tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def imbalance_measures(res: Results) -> plt.Figure:
    """7. Three imbalance measures side by side on test, per method and modality: permutation MU's share,
    the Shapley contribution (BalanceBenchmark's; in metric units) and mean-ablation utilization."""
    res = res.search()  # the study's runs, not a confirmation's (raybal confirm)
    t = res.trials
    measures = [("final.mu.", "permutation MU share"), ("final.test_shapley.", "Shapley contribution (metric)"),
                ("final.test_ablation_util.", "mean-ablation utilization")]
    if "status" in t:
        t = t[t["status"] == "ok"]
    shown = [(c, title) for c, title in measures if any(k.startswith(c) and t[k].notna().any() for k in t.columns)]
    if not any(c == "final.test_shapley." for c, _ in shown):
        raise NoData("no Shapley contributions recorded (runs older than the measure)")
    labels = trial_labels(t)
    _style()
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4.0), squeeze=False)
    for ax, (col, title) in zip(axes[0], shown):
        cols = [c for c in t.columns if c.startswith(col) and "." not in c[len(col):]]
        long = t.assign(method=t["trial_id"].map(labels)).melt(id_vars=["method"], value_vars=cols,
                                                               var_name="modality", value_name="value")
        long["modality"] = long["modality"].str[len(col):]
        sns.barplot(data=long, x="method", y="value", hue="modality", errorbar="sd", ax=ax, palette=PALETTE)
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set(xlabel="", ylabel=title, title=title)
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def importance(res: Results) -> plt.Figure:
    """8. Which searched knob drove the objective: each knob's importance (PED-ANOVA over the configurations'
    means) with its 95 % range over 80 % resamples."""
    from raybal.analysis.best import best_trial

    if res.kind != "study":
        raise NoData("not a study")
    imp = best_trial(res.path).importance
    if imp is None:
        raise NoData("nothing searched")
    if not imp.enough:
        raise NoData(imp.sentence())
    knobs = list(imp.values)
    vals = np.array([imp.values[k] for k in knobs])
    err = np.array([[imp.values[k] - imp.low[k] for k in knobs], [imp.high[k] - imp.values[k] for k in knobs]])
    _style()
    fig, ax = plt.subplots(figsize=(7.0, 0.5 * len(knobs) + 1.6))
    ax.barh(knobs[::-1], vals[::-1], xerr=err[:, ::-1].clip(min=0), color=sns.color_palette(PALETTE)[0],
            capsize=3)
    ax.set(xlabel=f"importance for {imp.metric} ({imp.evaluator}; sums to 1)", xlim=(0, 1),
           title=f"Which knob matters ({imp.n_configs} configurations)")
    for i, k in enumerate(knobs[::-1]):
        ax.text(0.99, i, f"first in {imp.first[k]:.0%}", ha="right", va="center", fontsize=8, color="0.3")
    fig.tight_layout()
    return fig


def robustness_mra(res: Results) -> plt.Figure:
    """9. Mean relative accuracy (mRA) per corrupted modality x corruption on test, one heat map per method
    (the mean over its runs), from ``robustness_summary.parquet``: where each method keeps its accuracy."""
    res = res.search()  # the study's runs, not a confirmation's (raybal confirm)
    path = res.path / "robustness_summary.parquet"
    if not path.is_file():
        raise NoData("no robustness summary (no sweep was run)")
    s = pd.read_parquet(path)
    s = s[(s["modality"] != "all") & (s["split"] == ("test" if (s["split"] == "test").any() else "val"))
          & s["trial_id"].isin(res.trials["trial_id"])]  # the runs shown (not a confirmation's)
    if s.empty:
        raise NoData("no robustness summary rows")
    labels = trial_labels(res.trials)
    s = s.assign(method=s["trial_id"].map(labels).fillna(s["trial_id"]))
    methods = list(dict.fromkeys(s["method"]))
    _style()
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods) + 1.0, 3.4), squeeze=False)
    for ax, m in zip(axes[0], methods):
        grid = s[s["method"] == m].pivot_table(index="modality", columns="corruption", values="mra", aggfunc="mean")
        sns.heatmap(grid, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", cbar=False, ax=ax)
        ax.set(title=m, xlabel="", ylabel="")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"mRA (corrupted / clean metric) on {s['split'].iloc[0]}", fontsize=10)
    fig.tight_layout()
    return fig


def confirmation(res: Results) -> plt.Figure:
    """10. The winner's curse, measured: each configuration ``raybal confirm`` re-trained, its search-time
    mean and 95 % interval (the seeds it was selected on) beside its confirmed one (fresh seeds)."""
    from raybal.analysis.best import best_trial
    from raybal.results.tables import ResultsError

    if res.kind != "study":
        raise NoData("not a study")
    none = NoData("no confirmation (raybal confirm DIR re-trains the top configurations on fresh seeds)")
    t = res.trials
    if not (res.path / "confirm.json").is_file() and not ("role" in t and (t["role"] == "confirm").any()):
        raise none
    try:
        conf = best_trial(res.path, importance=None).confirmed
    except ResultsError as exc:  # no configuration to call best: nothing to set the confirmation beside
        raise NoData(str(exc)) from None
    if conf is None or conf.table["n_confirmed"].sum() == 0:
        raise none
    tab = conf.table
    labels = [f"{'baseline' if r.role == 'baseline' else f'#{int(r.rank)}'} {str(r.config_id)[:8]}"
              for r in tab.itertuples()]
    y = np.arange(len(tab))
    _style()
    colors = sns.color_palette(PALETTE)
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(tab) + 2.2))
    for k, (col, name, dy) in enumerate((("search", "search (selection seeds)", 0.15),
                                         ("confirmed", f"confirmed ({len(conf.seeds)} fresh seeds)", -0.15))):
        mean, low, high = (tab[c].to_numpy(float) for c in (col, f"{col}.low", f"{col}.high"))
        err = np.nan_to_num(np.vstack([mean - low, high - mean]).clip(min=0))
        ax.errorbar(mean, y + dy, xerr=err, fmt="o", color=colors[k], capsize=3, label=name)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set(xlabel=f"{conf.metric} (mean, 95 % interval)", title="Search-time vs confirmed")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)  # off the bars
    fig.tight_layout()
    return fig


FIGURES: dict[str, tuple[Any, str]] = {
    "mu_over_epochs": (mu_over_epochs, "MU per modality over epochs, target ±0.05 as a band"),
    "accuracy_vs_noise": (accuracy_vs_noise, "accuracy vs noise level per corrupted modality"),
    "achieved_vs_target": (achieved_vs_target, "achieved vs target utilization, identity line and ±0.10 band"),
    "search": (search, "the objective vs each searched parameter (configuration means, 95 % intervals); "
               "Pareto front for multi-objective studies"),
    "configurations": (configurations, "every configuration's objective: mean and 95 % interval over its seeds, "
                       "the baseline's as a band"),
    "utilization_effect": (utilization_effect, "does utilization predict the objective? one point per run by "
                           "seed, the fitted slope with its 95 % band, variance shares of configuration and seed"),
    "greedy": (greedy, "learning-speed and conditional utilization imbalance (Wu et al. 2022)"),
    "importance": (importance, "each searched knob's importance for the objective (PED-ANOVA over the "
                   "configurations' means) with its range over resamples"),
    "robustness_mra": (robustness_mra, "mean relative accuracy per corrupted modality and corruption, per method "
                       "(robustness_summary.parquet)"),
    "confirmation": (confirmation, "the winner's curse, measured: each confirmed configuration's search-time and "
                     "confirmed (fresh seeds) mean with its 95 % interval"),
    "imbalance_measures": (imbalance_measures, "permutation MU, Shapley contribution and mean-ablation "
                           "utilization on test, per method and modality"),
}
