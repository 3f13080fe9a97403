"""raybal: multimodal fusion networks whose reliance on each modality is measured and steered.

Python API (mirrors the CLI)::

    import raybal
    cfg = raybal.load_config("studies/quickstart_run.toml", {"train.epochs": 4})
    result = raybal.fit(cfg)                      # pure PyTorch, no Ray
    raybal.write_results("results/run", [result]) # tidy Parquet (DESIGN.md §4)
    tables = raybal.load_results("results/run")
    raybal.run_study("studies/quickstart.toml", "results/quickstart")  # Ray Tune + Optuna
    raybal.best_target("results/quickstart")       # {"eo": 0.71, "sar": 0.29}
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "fit": ("raybal.train", "fit"),
    "RunResult": ("raybal.train", "RunResult"),
    "load_config": ("raybal.config", "load_config"),
    "default_config": ("raybal.config", "default_config"),
    "ConfigError": ("raybal.config", "ConfigError"),
    "load_results": ("raybal.results", "load_results"),
    "write_results": ("raybal.results", "write_results"),
    "run_study": ("raybal.study", "run_study"),
    "resume_study": ("raybal.study", "resume_study"),
    "load_study": ("raybal.space", "load_study"),
    "best_target": ("raybal.best", "best_target"),
    "best_trial": ("raybal.best", "best_trial"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'raybal' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
