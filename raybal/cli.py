"""The ``raybal`` command line (DESIGN.md §4).

Bad input (a config error, a missing file, a foreign results directory) prints one line
``raybal: error: ...`` naming what is wrong and exits with code 2, before any work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _progress(quiet: bool, stream: str = "stderr") -> Any:
    from raybal.training.progress import ProgressPrinter

    return ProgressPrinter(quiet, stream)


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    from raybal.config import parse_override

    return dict(parse_override(s) for s in items)


def cmd_train(args: argparse.Namespace) -> int:
    from raybal.resolve import load_config
    from raybal.training.runner import default_results_dir, train_to_dir

    overrides = _overrides(args.set)
    if args.workers is not None:
        overrides["train.workers"] = args.workers
    if args.gpu:
        overrides["train.use_gpu"] = True
    cfg = load_config(args.config, overrides)
    results = Path(args.results) if args.results else default_results_dir(cfg)
    distributed = cfg.train.workers > 1 or args.address
    # In a Ray Train worker, stdout reaches this console through Ray's log forwarding.
    progress = _progress(args.quiet, "stdout" if distributed else "stderr")
    result = train_to_dir(cfg, results, progress=progress, address=args.address, quiet=args.quiet,
                          mlflow=args.mlflow)
    _print_summary(result, results)
    return 0


def _print_summary(result: Any, results: Path) -> None:
    from raybal.config.tasks import metric_name

    f = result.final
    metric = metric_name(result.config.data.params.task)
    mods = result.config.modalities
    mu = "  ".join(f"{m} {f[f'final.mu.{m}']:.3f} (raw {f[f'final.mu_raw.{m}']:.3f})" for m in mods)
    print(f"done in {result.wall_s:.1f}s: val {metric} {f[f'final.val_{metric}']:.4f}  test {metric} "
          f"{f[f'final.test_{metric}']:.4f}  (best epoch {f['final.best_epoch']})")
    print(f"test MU share  {mu}")
    if "final.target_met" in f:
        p = result.config.balance.params
        target = "  ".join(f"{m} {p.target[m]:.3f}" for m in mods)
        verdict = "target met" if f["final.target_met"] else "target NOT met"
        how = {"target": f"epoch {f['final.best_epoch']}: the best validation {metric} within the tolerance",
               "closest": f"no epoch within the tolerance on validation; kept epoch {f['final.best_epoch']}, "
                          "the closest to the target"
               }.get(f["final.selected_by"], f"selection {f['final.selected_by']}")
        print(f"target         {target}  ->  {verdict}: test error {f['final.target_error']:.3f} "
              f"(tolerance {p.tolerance:g}; {how})")
    for k in sorted(x for x in f if x.startswith("robust.")):
        print(f"{k} {f[k]:.4f}")
    print(f"results: {results.resolve()}  (trials.parquet, epochs.parquet, utilization.parquet"
          f"{', robustness.parquet' if result.robustness else ''}, run.json)")


def cmd_robustness(args: argparse.Namespace) -> int:
    from raybal.training.runner import robustness_to_dir

    overrides = _suite(args.suite) if args.suite else {}
    overrides.update(_overrides(args.set))
    res, results = robustness_to_dir(args.checkpoint, args.results, overrides, progress=_progress(args.quiet))
    for k, v in res.final.items():
        if k.startswith("robust."):
            print(f"{k} {v:.4f}")
    print(f"results: {results.resolve()}  (robustness.parquet, trials.parquet, run.json)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from raybal.config import ConfigError
    from raybal.data.prepare import check_out, prepare, source_identity
    from raybal.resolve import load_config

    if not args.shard_mb > 0 or args.shard_mb == float("inf"):  # nan and inf too
        raise ConfigError("--shard-mb", f"a positive size in MiB, got {args.shard_mb:g}")
    if args.workers is not None and args.workers < 0:
        raise ConfigError("--workers", f"0 or more reading processes, got {args.workers}")
    cfg = load_config(args.config, _overrides(args.set))
    before = check_out(Path(args.out).expanduser(), source_identity(cfg.data))
    meta = prepare(cfg.data, args.out, workers=args.workers, shard_mb=args.shard_mb, progress=_progress(args.quiet))
    sizes = ", ".join(f"{s} {v['n']} ({len(v['shards'])} shards)" for s, v in sorted(
        meta["splits"].items(), key=lambda kv: ("train", "val", "test").index(kv[0])))
    verb = {"done": "already prepared", "resume": "finished preparing"}.get(before, "prepared")
    print(f"{verb} {meta['source']['data']['name']}: {sizes}; {meta['task']}, modalities "
          f"{', '.join(meta['modalities'])}")
    print(f"train on it with: [data] name = \"prepared\"  path = \"{Path(args.out).expanduser().resolve()}\"")
    return 0


def cmd_study_run(args: argparse.Namespace) -> int:
    from raybal.study.driver import run_study
    from raybal.study.space import load_study

    overrides = _overrides(args.set)
    if args.mlflow:
        overrides["study.mlflow"] = args.mlflow
    study = load_study(args.study, overrides)
    results = Path(args.results) if args.results else Path("results") / study.settings.name
    res = run_study(study, results, address=args.address, quiet=args.quiet)
    return _study_summary(res)


def cmd_study_resume(args: argparse.Namespace) -> int:
    from raybal.study.driver import resume_study

    return _study_summary(resume_study(args.results, address=args.address, quiet=args.quiet))


def _study_summary(res: Any) -> int:
    from raybal.analysis.best import best_trial, format_best, searched_columns
    from raybal.results.tables import ResultsError

    t = res.search().trials  # the study's own runs (not a confirmation's)
    objectives = [o["metric"] for o in res.meta.get("objectives", [])]
    cols = (["trial_id", "role", "train.seed", "status"] + [c for c in objectives if c in t]
            + searched_columns(t, res.meta))
    cols += [c for c in t.columns if c.startswith("final.mu.")] + ["wall_s"]
    reps, base = res.meta.get("repeats", 1), res.meta.get("baseline")
    counts = ", ".join(f"{n} {s}" for s, n in t["status"].value_counts().items())
    plan = (f"{res.meta['configurations']} configurations"
            + (f" + the {base} baseline" if base else ""))
    print(f"study {res.meta.get('name')}: {len(t)} runs ({counts}; {plan}, x {reps} seed{'s' if reps != 1 else ''}), "
          f"status {res.meta.get('status')}")
    print(t[list(dict.fromkeys(c for c in cols if c in t))].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    try:
        print()
        print(format_best(best_trial(res.path)))
    except ResultsError as exc:
        print(f"no best trial: {exc}")
    print(f"\nresults: {res.path}  (trials/epochs/utilization/robustness .parquet, study.json)")
    return 0 if res.meta.get("status") == "finished" else EXIT_FAILED


def cmd_confirm(args: argparse.Namespace) -> int:
    from raybal.analysis.best import best_trial, format_best
    from raybal.analysis.confirm import confirm

    res = confirm(args.results, top=args.top, seeds=args.seeds, address=args.address, quiet=args.quiet)
    print(format_best(best_trial(args.results)))
    conf = res.trials[res.trials["role"] == "confirm"]
    failed = conf[conf["status"] != "ok"]
    if not failed.empty:
        seeds = ", ".join(f"{r['config_id']} seed {int(r['train.seed'])}" for _, r in failed.iterrows())
        print(f"raybal: {len(failed)} confirmation run(s) did not finish ok ({seeds}); run the same command to "
              "retry them", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    import json

    from raybal.analysis.best import best_trial, format_best

    cons = list(args.constraint) + (["final.target_met == true"] if args.target_met else [])
    if args.per_method:
        from raybal.analysis.best import best_per_method

        df = best_per_method(args.results, args.metric, args.mode, cons)
        print(df.to_json(orient="records", indent=2) if args.json
              else df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return 0
    b = best_trial(args.results, args.metric, args.mode, cons, top=args.top,
                   importance=None if args.importance == "none" else args.importance)
    print(json.dumps(b.to_json(), indent=2) if args.json else format_best(b))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from raybal.analysis.report import make_report

    figures = make_report(args.results, args.out)
    for f in figures:
        print(f"{f.name:20s} {f.path if f.path else 'skipped: ' + (f.note or '')}")
    out = next((f.path.parent for f in figures if f.path),
               Path(args.out) if args.out else Path(args.results) / "report")
    print(f"report: {(out / 'index.html').resolve()}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from raybal.balancing import METHODS
    from raybal.config import ConfigError
    from raybal.config.registry import knobs
    from raybal.data import DATASETS
    from raybal.models import MODELS
    from raybal.noise import CORRUPTIONS

    registries = (("data sets", DATASETS), ("models", MODELS), ("balancing methods", METHODS),
                  ("corruptions", CORRUPTIONS))
    if args.name is None:
        for title, reg in registries:
            print(f"{title}:")
            for name, doc in reg.describe():
                print(f"  {name:18s} {doc}")
        print("\n`raybal info NAME` lists an entry's knobs.")
        return 0
    found = [(reg, reg.get(args.name)) for _, reg in registries if args.name in reg]
    if not found:
        known = sorted(n for _, reg in registries for n in reg.names())
        raise ConfigError("info", f"unknown name {args.name!r} (known: {', '.join(known)})")
    for reg, entry in found:
        print(f"{entry.name} ({reg.kind}): {entry.doc}")
        rows = knobs(entry.params)
        if not rows:
            print("  no knobs")
        for k in rows:
            rng = f" [{k['range']}]" if k["range"] else ""
            doc = f"  {k['doc']}" if k["doc"] else ""
            print(f"  {k['name']} = {k['default']!r}{rng}{doc}")
    return 0


def _suite(path: str) -> dict[str, object]:
    """A suite file's ``[robustness]`` table as ``robustness.*`` overrides (e.g. studies/robustness_suite.toml)."""
    from raybal.config import ConfigError, load_toml

    raw = load_toml(Path(path))
    extra = sorted(set(raw) - {"robustness"})
    if "robustness" not in raw or extra:
        raise ConfigError("--suite", f"{path}: a file with a [robustness] section only"
                          + (f" (found {', '.join(extra)})" if extra else ""))
    return {f"robustness.{k}": v for k, v in raw["robustness"].items()}


def _add_set(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def build_parser() -> argparse.ArgumentParser:
    from raybal import __version__

    p = argparse.ArgumentParser(
        prog="raybal",
        description="Train multimodal fusion networks whose modality utilization is measured and steered, "
                    "and run robustness and hyperparameter studies on Ray.",
        epilog="Exit codes: 0 ok, 1 the run failed, 2 bad input. The file formats: docs/run-file.md.")
    p.add_argument("--version", action="version", version=f"raybal {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train one model from a run file (no search)",
                       description="Train one model as a run file (TOML) says; write trials/epochs/utilization "
                                   "Parquet tables, run.json and checkpoints to --results. Re-running the same "
                                   "config into the same --results resumes from its last checkpoint.")
    t.add_argument("config", help="run file (TOML): [data] [model] [balance] [train] [robustness]")
    t.add_argument("--results", help="results directory (default: results/train-<data>-<method>-<hash>)")
    _add_set(t, "override a config value, e.g. --set train.lr=0.003 (repeatable; values read as TOML)")
    t.add_argument("--workers", type=int, help="data-parallel workers on Ray Train (default: train.workers)")
    t.add_argument("--gpu", action="store_true", help="one GPU per worker (sets train.use_gpu)")
    t.add_argument("--address", help="join a running Ray cluster (e.g. auto) instead of training in-process")
    t.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    t.add_argument("--mlflow", metavar="URI", help="also log the run to this MLflow tracking URI, e.g. "
                   "sqlite:///mlflow.db (needs the mlflow extra)")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("robustness", help="robustness sweep of one trained model",
                       description="Evaluate a checkpoint (model.pt) under corruptions of each modality (noise, "
                                   "speckle, a missing modality, clouds, haze, blur, resolution, misregistration, "
                                   "dropped bands; joint faults); writes robustness.parquet and "
                                   "robustness_summary.parquet (mRA, relative robustness). The grid comes from the "
                                   "checkpoint's [robustness] section, replaced key by key by --suite FILE, then "
                                   "by --set robustness.KEY=VALUE.")
    r.add_argument("checkpoint", help="a model.pt written by raybal train / study")
    r.add_argument("--results", help="output directory (default: results/robustness-<trial>-<hash>)")
    r.add_argument("--suite", metavar="FILE", help="a TOML file with a [robustness] section, e.g. "
                   "studies/robustness_suite.toml (every corruption at severities 1-5, missing rates 0.1-0.5)")
    _add_set(r, "e.g. --set 'robustness.corruptions=[\"gaussian\",\"speckle\"]'")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_robustness)

    pp = sub.add_parser("prepare", help="pack a data set into record shards read fast, locally or from a URL",
                        description="Read the data set a run file's [data] section names through its own loader "
                                    "once (data.num_workers processes) and write OUT: record shards (.npy), each "
                                    "split's assignment, the training split's per-channel mean / std and "
                                    "prepared.json, written last. Train on it with [data] name = \"prepared\", "
                                    "path = OUT (or an fsspec URL to a copy: s3://, gs://, file://). Interrupted, "
                                    "the same command resumes; OUT must be new, empty or an earlier prepare of "
                                    "the same data config.")
    pp.add_argument("config", help="run file (TOML) whose [data] section names the data set")
    pp.add_argument("out", help="the store's folder (new or empty; a shared file system for a cluster)")
    _add_set(pp, "override a [data] value, e.g. --set data.limit=1000")
    pp.add_argument("--workers", type=int, help="reading processes (default: data.num_workers)")
    pp.add_argument("--shard-mb", type=float, default=64.0, help="target shard size in MiB (default 64)")
    pp.add_argument("--quiet", action="store_true", help="no progress line")
    pp.set_defaults(func=cmd_prepare)

    st = sub.add_parser("study", help="hyperparameter / target-utilization studies on Ray Tune + Optuna",
                        description="Run or resume a study: Optuna proposes trials from [search], Ray Tune runs them "
                                    "(ASHA stops weak ones early) and every finished trial lands in the Parquet "
                                    "tables at once.")
    ssub = st.add_subparsers(dest="study_command", required=True, metavar="SUBCOMMAND")
    sr = ssub.add_parser("run", help="run a study file",
                         description="Run a study file (a run file plus [study] and [search]). Without --address "
                                     "a local Ray is started on this machine and stopped at the end.")
    sr.add_argument("study", help="study file (TOML)")
    sr.add_argument("--results", help="results directory (default: results/<study.name>)")
    sr.add_argument("--address", help="join a running Ray cluster, e.g. auto")
    sr.add_argument("--mlflow", metavar="URI", help="also log every run to this MLflow tracking URI (sets "
                    "study.mlflow; needs the mlflow extra)")
    _add_set(sr, "override a value of the file, e.g. --set study.num_samples=4")
    sr.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    sr.set_defaults(func=cmd_study_run)
    sm = ssub.add_parser("resume", help="continue an interrupted study",
                         description="Continue a study stopped by Ctrl-C or a crash: finished trials are kept, "
                                     "unfinished ones resume from their last checkpoint, none runs twice.")
    sm.add_argument("results", help="the study's results directory")
    sm.add_argument("--address", help="join a running Ray cluster, e.g. auto")
    sm.add_argument("--quiet", action="store_true")
    sm.set_defaults(func=cmd_study_resume)

    cf = sub.add_parser("confirm", help="re-train a study's top configurations and its baseline on fresh seeds",
                        description="The best of many configurations looks better on the seeds it was selected on "
                                    "than it is (the winner's curse). Re-train the top K configurations (ranked as "
                                    "raybal best ranks them) and the study's baseline with N seeds no run of DIR "
                                    "used, record them in DIR's tables with role = \"confirm\", then print raybal "
                                    "best's answer with the confirmed means, intervals, the gap to the search-time "
                                    "figures and the paired difference to the baseline on the fresh seeds. "
                                    "Interrupted, the same command continues (the plan is fixed in confirm.json).")
    cf.add_argument("results", help="a study's results directory (raybal study run)")
    cf.add_argument("--top", type=int, default=3, help="configurations to confirm (default 3)")
    cf.add_argument("--seeds", type=int, default=5, help="fresh seeds per configuration (default 5, at least 2)")
    cf.add_argument("--address", help="join a running Ray cluster, e.g. auto")
    cf.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    cf.set_defaults(func=cmd_confirm)

    b = sub.add_parser("best", help="the best configuration (mean ± 95 %% CI over seeds, vs baseline and runner-up)",
                       description="Pick the best configuration of a results directory by a validation metric: "
                                   "the best mean over its seeds (study.repeats) among configurations whose every "
                                   "seed finished ok and whose means meet the constraints. Print the mean with its "
                                   "95 %% interval, the difference to the study's baseline and to the runner-up "
                                   "(paired by seed, with intervals, and whether they are distinguishable), the "
                                   "target, achieved MU, searched values, which searched knob matters, the "
                                   "runners-up and, for multi-objective studies, the Pareto set.")
    b.add_argument("results", help="a results directory written by raybal study run or raybal train")
    b.add_argument("--metric", help="a trials.parquet column (default: the study's objective)")
    b.add_argument("--mode", choices=["max", "min"], help="default: the study's, else min for loss/error metrics")
    b.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="e.g. 'final.val_accuracy >= 0.9' (repeatable; added to the study's own)")
    b.add_argument("--target-met", action="store_true",
                   help="only trials whose test utilization met their target (final.target_met, within "
                        "balance.tolerance); same as --constraint 'final.target_met == true'")
    b.add_argument("--top", type=int, default=5, help="runners-up to show")
    b.add_argument("--per-method", action="store_true",
                   help="the best configuration of each balancing method, with intervals and its difference "
                        "to the baseline (a method comparison: see study.per_method)")
    b.add_argument("--importance", choices=["ped_anova", "fanova", "none"], default="ped_anova",
                   help="which searched knob drove the metric, over the configurations' means, with its range "
                        "over 80 %% resamples: PED-ANOVA (default) or fANOVA; 'not enough configurations' below 8 "
                        "(or 2 per knob)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=cmd_best)

    rp = sub.add_parser("report", help="the standard figures (PNG) and an index.html over a results directory",
                        description="Plot MU over epochs (target band), accuracy vs noise per corrupted modality, "
                                    "achieved vs target utilization, the search (objective vs each parameter, "
                                    "Pareto front) and Wu et al.'s imbalance curves, from the Parquet tables only. "
                                    "Figures the tables cannot support are skipped with a note.")
    rp.add_argument("results", help="a results directory (raybal train or raybal study run)")
    rp.add_argument("--out", help="output directory (default: RESULTS/report)")
    rp.set_defaults(func=cmd_report)

    i = sub.add_parser("info", help="list the registered data sets, models, methods and corruptions",
                       description="Without NAME: every registered entry with one sentence. With NAME: that "
                                   "entry's knobs (the keys of its run-file section) with their defaults, "
                                   "ranges and docs.")
    i.add_argument("name", nargs="?", help="a data set, model, balancing method or corruption")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from raybal.config import ConfigError
    from raybal.data.base import DataError
    from raybal.results.tables import ResultsError
    from raybal.training.checkpoint import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, DataError, ResultsError, CheckpointError) as exc:
        from raybal.config.secrets import redact

        print(f"raybal: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("raybal: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`raybal info | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # the run itself failed: recorded in the results, one line here
        from raybal.config.secrets import redact
        from raybal.results.schema import one_line

        print(f"raybal: run failed: {redact(one_line(exc))}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
