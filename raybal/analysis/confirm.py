"""``raybal confirm`` from the analysis side: ``raybal best``'s ranking handed to the confirmation runs.

The runs themselves are :mod:`raybal.study.confirm` (Ray Tune); what they say is
:mod:`raybal.analysis.confirmed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ranking(results_dir: Path, k: int) -> tuple[list[str], str, str]:
    """``raybal best``'s ranking of a study's configurations: the best ``k`` config ids, the metric, the mode."""
    from raybal.analysis.best import best_trial

    b = best_trial(results_dir, top=k, importance=None)
    return [b.config_id, *b.runners_up["config_id"].astype(str)][:k], b.metric, b.mode


def confirm(results_dir: str | Path, *, top: int = 3, seeds: int = 5, address: str | None = None,
            quiet: bool = False) -> Any:
    """``raybal confirm``: re-train the study's top ``top`` configurations (as ``raybal best`` ranks them)
    and its baseline on ``seeds`` fresh seeds (:func:`raybal.study.confirm.confirm_study`); then
    ``raybal best`` reports them (:attr:`raybal.analysis.best.Best.confirmed`). Returns the tables."""
    from raybal.study.confirm import confirm_study

    return confirm_study(results_dir, ranking, top=top, seeds=seeds, address=address, quiet=quiet)
