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

from typing import Any

from raybal._version import __version__

_LAZY = {
    "fit": ("raybal.train", "fit"),
    "RunResult": ("raybal.records", "RunResult"),
    "load_config": ("raybal.resolve", "load_config"),
    "default_config": ("raybal.resolve", "default_config"),
    "ConfigError": ("raybal.config", "ConfigError"),
    "load_results": ("raybal.results", "load_results"),
    "write_results": ("raybal.results", "write_results"),
    "run_study": ("raybal.study", "run_study"),
    "resume_study": ("raybal.study", "resume_study"),
    "load_study": ("raybal.space", "load_study"),
    "best_target": ("raybal.best", "best_target"),
    "best_trial": ("raybal.best", "best_trial"),
    "ProgressPrinter": ("raybal.progress", "ProgressPrinter"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'raybal' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
