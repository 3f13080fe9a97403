"""Results as files: the tidy Parquet tables of DESIGN.md §4, written atomically and read back.

A results directory holds ``trials.parquet`` (one row per trial), ``epochs.parquet``,
``utilization.parquet``, ``robustness.parquet`` (long format, seaborn-ready) and ``run.json``
or ``study.json``. The rows and their columns are :mod:`raybal.results.schema`' business; this module
only writes and reads files. Every file is written under a temporary name and renamed into
place, so a reader never sees half a file; appending a trial rewrites each table whole (rows of
the same trial are replaced, never duplicated).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from raybal._atomic import atomic_path
from raybal._version import __version__
from raybal.results.schema import TABLES, RunResult, frame, tables_of


class ResultsError(ValueError):
    """A results directory that is missing, empty, foreign or unreadable."""


def atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


MIN_FREE_MB = 64  # below this a run would die on its first checkpoint: refuse before training


def check_writable(results_dir: str | Path) -> Path:
    """Fail early (before any training) when results cannot be written there: not creatable,
    read-only, or a disk with less than ``$RAYBAL_MIN_FREE_MB`` (default 64) MB free."""
    d = Path(results_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".write-probe-")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise ResultsError(f"results directory {d} is not writable ({exc.strerror or exc})") from None
    need = float(os.environ.get("RAYBAL_MIN_FREE_MB", MIN_FREE_MB))
    free = shutil.disk_usage(d).free / 2**20
    if free < need:
        raise ResultsError(f"results directory {d}: only {free:.0f} MB free on its disk (need {need:.0f} MB; "
                           "set RAYBAL_MIN_FREE_MB to change)")
    return d


def _merge(old: pd.DataFrame | None, new: pd.DataFrame, table: str) -> pd.DataFrame:
    if old is None or old.empty:
        return new
    if new.empty:
        return old
    replaced = set(new["trial_id"].astype(str))
    keep = old[~old["trial_id"].astype(str).isin(replaced)]
    return pd.concat([keep, new], ignore_index=True)


SUMMARY = "robustness_summary"  # derived from trials + robustness at each write (raybal.results.robust_summary)


def write_results(results_dir: str | Path, results: Iterable[RunResult], *, append: bool = True) -> Path:
    """Write (or merge into) the Parquet tables of ``results_dir``; rows of a re-run trial are replaced."""
    d = Path(results_dir)
    new = tables_of(results)
    written: dict[str, pd.DataFrame] = {}
    for table, df in new.items():
        path = d / f"{table}.parquet"
        old = read_table(path) if append and path.is_file() else None
        merged = _merge(old, df, table)
        if merged.empty and not path.is_file() and table == "robustness":
            continue  # no sweep was run: no robustness table
        atomic_write_parquet(merged, path)
        written[table] = merged
    if not written.get("robustness", pd.DataFrame()).empty:  # derived from the whole directory's tables
        from raybal.config.tasks import metric_of_columns
        from raybal.results.robust_summary import summary_table

        trials = written["trials"]
        atomic_write_parquet(summary_table(trials, written["robustness"], metric_of_columns(trials.columns)),
                             d / f"{SUMMARY}.parquet")
    return d


# The layout of a results directory: its record (study.json / run.json) and the tables' columns. A
# directory of another layout is refused by name, never half-read; bump it with any change a reader
# would trip on (the CHANGELOG says what changed).
FORMAT_VERSION = 1


def read_meta(path: Path) -> dict[str, Any]:
    """A results directory's record (``study.json`` / ``run.json``), checked to be of this layout."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ResultsError(f"{path}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{path}: not a raybal results record")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ResultsError(f"{path}: results format {meta.get('format_version')!r}, this raybal reads format "
                           f"{FORMAT_VERSION}: use the raybal that wrote it, or a new results directory")
    return meta


def environment() -> dict[str, str]:
    import torch

    env = {"raybal": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform()}
    try:
        import ray

        env["ray"] = ray.__version__
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return env


@dataclass
class Results:
    """The tables of one results directory (missing tables are empty frames)."""

    path: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame
    utilization: pd.DataFrame
    robustness: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "run"))

    def search(self) -> Results:
        """These tables without a confirmation's runs (``role = "confirm"``, ``raybal confirm``): the
        search's own, what its figures and its selection read."""
        t = self.trials
        if t.empty or "role" not in t or not (t["role"] == "confirm").any():
            return self
        ids = set(t.loc[t["role"] == "confirm", "trial_id"].astype(str))

        def keep(df: pd.DataFrame) -> pd.DataFrame:
            return df[~df["trial_id"].astype(str).isin(ids)] if "trial_id" in df else df

        return Results(self.path, keep(t), keep(self.epochs), keep(self.utilization), keep(self.robustness),
                       self.meta)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one Parquet table through a single open file handle.

    A table is replaced by an atomic rename while a study runs. ``pd.read_parquet(path)`` may
    open the path twice (footer, then pages) and so mix the old file's footer with the new
    file's pages; one handle pins one version of the file.
    """
    with open(path, "rb") as fh:
        return pd.read_parquet(fh)


def load_results(results_dir: str | Path) -> Results:
    """Read a results directory written by ``raybal train`` or ``raybal study run``."""
    d = Path(results_dir)
    if not d.is_dir():
        raise ResultsError(f"results directory not found: {d}")
    meta_path = next((d / n for n in ("study.json", "run.json") if (d / n).is_file()), None)
    trials_path = d / "trials.parquet"
    if meta_path is None and not trials_path.is_file():
        raise ResultsError(f"{d} is not a raybal results directory (no trials.parquet, run.json or study.json)")
    meta = read_meta(meta_path) if meta_path is not None else {}
    frames = {}
    for t in TABLES:
        p = d / f"{t}.parquet"
        try:
            frames[t] = read_table(p) if p.is_file() else frame([], t)
        except Exception as exc:
            raise ResultsError(f"{p}: unreadable Parquet ({exc.__class__.__name__})") from None
    return Results(d, frames["trials"], frames["epochs"], frames["utilization"], frames["robustness"], meta)
