"""A trial's own record on disk: ``checkpoints/<trial_id>/result.json``.

The process that trains a trial (a Tune trial, or rank 0 of a Ray Train run) leaves its
:class:`~raybal.results.schema.RunResult` here; the study driver, the only writer of the Parquet
tables, reads it back when it records the trial. It is plain JSON (the config as its JSON string,
the rows as lists of objects), never a pickle: a results folder on shared storage is written by many
processes and read by the next ``raybal study resume``, and reading it must not be able to run code.
A file that is not such a record is refused, never half-read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from raybal._atomic import atomic_write_bytes
from raybal.config import ConfigError
from raybal.resolve import config_from_json
from raybal.results.schema import RunResult
from raybal.results.tables import ResultsError

RESULT_FILE = "result.json"
FORMAT_VERSION = 1
_FIELDS = ("trial_id", "status", "error", "epochs", "utilization", "robustness", "final", "wall_s", "checkpoint",
           "replicate", "role")


class ResultFileError(ResultsError):
    """A trial's result file that is not a raybal record; the message names the file."""


def _plain(value: Any) -> Any:
    """numpy and torch scalars as Python numbers (``json`` takes those only)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON data")


def write_result(ckdir: Path, result: RunResult) -> None:
    """Write ``result`` as ``ckdir/result.json`` (atomic: a reader sees the old file or the new one)."""
    record = {"format_version": FORMAT_VERSION, "config_json": result.config.to_json(),
              **{k: getattr(result, k) for k in _FIELDS}}
    atomic_write_bytes(ckdir / RESULT_FILE, json.dumps(record, default=_plain).encode())


def has_result(ckdir: Path) -> bool:
    return (ckdir / RESULT_FILE).is_file()


def read_result(ckdir: Path) -> RunResult | None:
    """The record in ``ckdir``; None when there is none. A file that is not a raybal record (torn, of
    another format, or not JSON at all) raises :class:`ResultFileError` naming it."""
    path = ckdir / RESULT_FILE
    if path.is_symlink() or ckdir.is_symlink():  # raybal writes plain files in plain folders: never follow one
        raise ResultFileError(f"{path}: a link, not a trial record raybal wrote")
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text, parse_constant=lambda c: {"NaN": math.nan, "Infinity": math.inf,
                                                            "-Infinity": -math.inf}[c])
        if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format {record.get('format_version') if isinstance(record, dict) else None!r}")
        return RunResult(config=config_from_json(record["config_json"]), **{k: record[k] for k in _FIELDS})
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ResultFileError(f"{path}: not a raybal trial record ({type(exc).__name__}: {exc})") from None
