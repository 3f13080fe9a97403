"""A trial's own record on disk: ``checkpoints/<trial_id>/result.pkl``.

The process that trains a trial (a Tune trial, or rank 0 of a Ray Train run) leaves its
:class:`~raybal.results.schema.RunResult` here; the study driver, the only writer of the Parquet
tables, reads it back when it records the trial. One module writes and reads it, so its format
has one home.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from raybal._atomic import atomic_write_bytes
from raybal.results.schema import RunResult

RESULT_FILE = "result.pkl"


def write_result(ckdir: Path, result: RunResult) -> None:
    """Write ``result`` as ``ckdir/result.pkl`` (atomic: a reader sees the old file or the new one)."""
    atomic_write_bytes(ckdir / RESULT_FILE, pickle.dumps(result))


def read_result(ckdir: Path) -> RunResult | None:
    """The record in ``ckdir``; None when there is none or it cannot be read (a torn or foreign file)."""
    try:
        result = pickle.loads((ckdir / RESULT_FILE).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError):
        return None
    return result if isinstance(result, RunResult) else None


def has_result(ckdir: Path) -> bool:
    return (ckdir / RESULT_FILE).is_file()
