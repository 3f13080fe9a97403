"""A Ray Train worker SIGKILLed mid-run: Ray Train restarts the worker group and every rank
resumes from rank 0's last epoch checkpoint; every epoch appears once (issue 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import check_tables, write_run


@pytest.mark.faults
def test_killed_worker_is_replaced_and_run_completes(tmp_path: Path, local_ray: None) -> None:
    import ray

    address = ray.get_runtime_context().gcs_address  # the session's Ray: no cold start of a second one
    # killed once epoch 2 is checkpointed, 2 epochs left to resume into
    run, out = write_run(tmp_path, epochs=4, n_train=512), tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-m", "raybal.cli", "train", str(run), "--workers", "2", "--results",
                             str(out), "--quiet", "--address", address],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ck = out / "checkpoints" / "run"
    victim = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        last = ck / "last.pt"
        pidfile = ck / "workers" / "rank1.pid"
        if last.is_file() and pidfile.is_file():
            import torch

            try:
                epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
            except Exception:
                epoch = 0
            if epoch >= 2:
                victim = int(pidfile.read_text())
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.3)
    assert victim is not None, "never reached epoch 2: " + (proc.stdout.read() if proc.stdout else "")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    check_tables(out, 4)
    # the replacement worker is a new process, and training did not start over
    assert int((ck / "workers" / "rank1.pid").read_text()) != victim
