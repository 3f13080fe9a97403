"""What a study's trials claim in its results directory before they train.

* Trial slots: Tune snapshots its experiment state every second or so; a driver killed between
  snapshots forgets the trials it started since, and the restored study would start as many again
  (a re-drawn point, a new id): one trial too many. So every trial first claims one of the study's
  ``Study.runs`` slots (an O_EXCL file holding its id, on the results directory's storage). A trial
  that finds no free slot is skipped: it trains nothing and is not recorded. On resume, slots of
  trials that never finished are released.
* Configurations: training is deterministic given the resolved config, so a trial whose config
  another trial already finished reuses that result, and one whose config another trial is
  training now waits for it (``configs/<digest>`` and ``configs/<digest>.running``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from raybal.training.result_file import ResultFileError, has_result, read_result, write_result

SLOTS = "slots"  # a study's run slots; a confirmation (raybal confirm) claims its own, in "slots-confirm"


def claim_slot(results_dir: Path, tid: str, n: int, folder: str = SLOTS) -> bool:
    sd = results_dir / folder
    sd.mkdir(parents=True, exist_ok=True)
    for f in sd.iterdir():
        if f.read_text() == tid:
            return True  # a restarted trial keeps its slot
    for k in range(n):
        try:
            fd = os.open(sd / f"{k:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(tid)
        return True
    return False


def slot_holders(results_dir: Path, folder: str = SLOTS) -> set[str]:
    """Ids of the trials that hold a slot now."""
    sd = results_dir / folder
    return {f.read_text() for f in sd.iterdir()} if sd.is_dir() else set()


def release_unfinished_slots(results_dir: Path, folder: str = SLOTS) -> None:
    release_configs(results_dir)
    sd = results_dir / folder
    for f in sd.iterdir() if sd.is_dir() else []:
        tid = f.read_text()
        if not has_result(results_dir / "checkpoints" / tid):
            f.unlink(missing_ok=True)


CONFIGS_DIR = "configs"  # <digest> -> the id of the first trial that finished that resolved config


def index_finished(results_dir: Path, cfg: Any, tid: str) -> None:
    """Remember that trial ``tid`` finished ``cfg`` (the first such trial wins)."""
    d = results_dir / CONFIGS_DIR
    d.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(d / cfg.digest(), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(tid)


def reuse_finished(results_dir: Path, cfg: Any, tid: str, replicate: int = 0, role: str = "search") -> Any:
    """The result of an earlier trial that finished the same resolved config (``RunConfig.digest``: what
    the run computes, resources aside), as trial ``tid``'s own record, written beside its checkpoints;
    None when there is none. Training is deterministic given the config, so the answer is the same and
    the study's budget goes to configurations it has not seen (a sampler can propose the parameter-free
    vanilla branch of a conditional space many times). A trial whose config another trial is training
    right now waits for it (:func:`await_config`)."""
    entry = results_dir / CONFIGS_DIR / cfg.digest()
    if not entry.is_file():
        return None
    src = entry.read_text().strip()
    try:
        prior = read_result(results_dir / "checkpoints" / src)
    except ResultFileError as exc:  # not reused, never run: this trial trains the config itself
        print(f"raybal: not reusing {src}: {exc}", file=sys.stderr)
        return None
    if prior is None or prior.status != "ok" or src == tid:
        return None
    t0 = time.perf_counter()

    def own(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**row, "trial_id": tid} for row in rows]

    ckdir = results_dir / "checkpoints" / tid
    ckdir.mkdir(parents=True, exist_ok=True)
    # This trial's own config (the same digest; resources may differ), replicate and role.
    res = dataclasses.replace(prior, trial_id=tid, config=cfg, replicate=replicate, role=role,
                              epochs=own(prior.epochs), utilization=own(prior.utilization),
                              robustness=own(prior.robustness), final={**prior.final, "final.reused_from": src},
                              wall_s=time.perf_counter() - t0)
    write_result(ckdir, res)
    return res


RUNNING = ".running"  # configs/<digest>.running: the id of the trial training that config now


def _claim_config(results_dir: Path, cfg: Any, tid: str) -> str | None:
    """Claim the training of ``cfg`` for trial ``tid``: None when it is ours, else the holder's id."""
    d = results_dir / CONFIGS_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{cfg.digest()}{RUNNING}"
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = path.read_text().strip()
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released between the two calls: try again
            if holder == "" and age > 30:  # created by a process that died before writing its id
                path.unlink(missing_ok=True)
                continue
            return None if holder == tid else holder or "?"  # ours (a restarted trial), or held
        with os.fdopen(fd, "w") as fh:
            fh.write(tid)
        return None


def await_config(results_dir: Path, cfg: Any, tid: str, replicate: int = 0, role: str = "search",
                 poll_s: float = 0.5) -> Any:
    """Reuse or claim ``cfg``: while another trial trains the same resolved config, wait; then its result
    as this trial's (:func:`reuse_finished`), or None (the other trial was stopped or failed, or there was
    none): this trial holds the claim and trains the config itself. The claim is released by
    :func:`release_configs` when the trial ends (by the trial, and by the driver when it records it)."""
    while _claim_config(results_dir, cfg, tid) is not None:
        time.sleep(poll_s)
    reused = reuse_finished(results_dir, cfg, tid, replicate, role)
    if reused is not None:
        release_configs(results_dir, tid)
    return reused


def release_configs(results_dir: Path, tid: str | None = None) -> None:
    """Drop the training claims of trial ``tid`` (None: every claim, for a resumed study)."""
    d = results_dir / CONFIGS_DIR
    for f in d.glob(f"*{RUNNING}") if d.is_dir() else []:
        try:
            if tid is None or f.read_text().strip() == tid:
                f.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
