"""raybal: multimodal fusion networks whose reliance on each modality is measured and steered.

Python API (mirrors the CLI)::

    import raybal
    cfg = raybal.load_config("studies/quickstart_run.toml", {"train.epochs": 4})
    result = raybal.fit(cfg)                      # pure PyTorch, no Ray
    raybal.write_results("results/run", [result]) # tidy Parquet (DESIGN.md §4)
    tables = raybal.load_results("results/run")
    raybal.run_study("studies/quickstart.toml", "results/quickstart")  # Ray Tune + Optuna
    raybal.best_target("results/quickstart")       # {"eo": 0.71, "sar": 0.29}

Names are imported on first use, so ``import raybal`` stays cheap (no torch, no Ray).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raybal._version import __version__

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from raybal.analysis.best import best_target, best_trial
    from raybal.analysis.confirm import confirm
    from raybal.config import ConfigError
    from raybal.resolve import default_config, load_config
    from raybal.results.schema import RunResult
    from raybal.results.tables import load_results, write_results
    from raybal.study.driver import resume_study, run_study
    from raybal.study.space import load_study
    from raybal.training.loop import fit
    from raybal.training.progress import ProgressPrinter

_LAZY = {
    "fit": ("raybal.training.loop", "fit"),
    "RunResult": ("raybal.results.schema", "RunResult"),
    "load_config": ("raybal.resolve", "load_config"),
    "default_config": ("raybal.resolve", "default_config"),
    "ConfigError": ("raybal.config", "ConfigError"),
    "load_results": ("raybal.results.tables", "load_results"),
    "write_results": ("raybal.results.tables", "write_results"),
    "run_study": ("raybal.study.driver", "run_study"),
    "resume_study": ("raybal.study.driver", "resume_study"),
    "load_study": ("raybal.study.space", "load_study"),
    "best_target": ("raybal.analysis.best", "best_target"),
    "best_trial": ("raybal.analysis.best", "best_trial"),
    "confirm": ("raybal.analysis.confirm", "confirm"),
    "ProgressPrinter": ("raybal.training.progress", "ProgressPrinter"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'raybal' has no attribute {name!r}")


__all__ = [
    "ConfigError", "ProgressPrinter", "RunResult", "__version__", "best_target", "best_trial", "confirm",
    "default_config", "fit", "load_config", "load_results", "load_study", "resume_study", "run_study", "write_results",
]
