"""How many samples one evaluation ``encode`` pass should take (``raybal.measure.utilization.EVAL_BATCH``).

Every evaluation in a run (the per-epoch validation MU and test pass, the final measures)
encodes its split in chunks of ``EVAL_BATCH`` samples (``encode_chunked``). The per-sample cost of
a pass depends on the chunk through the CPU caches, not only on the arithmetic: this table times
one pass over a split in eval mode at several chunk sizes, per backbone, image size and thread
count, with the chunk sizes in alternation (machine noise hits all alike) and the median of
``--rounds``. Results do not depend on the chunk (evaluation is per sample).

    python benchmarks/bench_eval_batch.py [--quick] [--out benchmarks/out/eval_batch.parquet]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from raybal.data import load_data
from raybal.measure.utilization import EVAL_BATCH, encode_chunked
from raybal.resolve import default_config
from raybal.training.loop import build_for
from raybal.training.steps import to_device

sys.path.insert(0, str(Path(__file__).parent))
from _record import record  # noqa: E402

CASES = (("cnn", 32), ("cnn", 64), ("resnet18", 32), ("resnet18", 64), ("convnext_tiny", 32))


@torch.no_grad()
def one_pass(model, xb: dict[str, torch.Tensor], chunk: int) -> float:
    t = time.perf_counter()
    encode_chunked(model, xb, chunk)
    return time.perf_counter() - t


def rows_for(backbone: str, size: int, n: int, chunks: list[int], threads: list[int], rounds: int) -> list[dict]:
    cfg = default_config(**{"model.backbone": backbone, "data.image_size": size, "data.n_train": 64,
                            "data.n_val": n, "data.n_test": 10, "train.memory_format": "channels_last"})
    data = load_data(cfg.data)
    model = build_for(cfg, data).to(memory_format=torch.channels_last).eval()
    xb, _ = next(iter(data.val.batches(n)))
    xb = to_device(xb, torch.device("cpu"), channels_last=True)
    rows = []
    for th in threads:
        torch.set_num_threads(th)
        for c in chunks:  # warm-up: the allocator and oneDNN's kernel caches
            one_pass(model, xb, c)
        times: dict[int, list[float]] = {c: [] for c in chunks}
        for _ in range(rounds):
            for c in chunks:
                times[c].append(one_pass(model, xb, c))
        med = {c: statistics.median(v) for c, v in times.items()}
        ref = med.get(EVAL_BATCH, med[chunks[0]])
        rows += [{"backbone": backbone, "px": size, "threads": th, "chunk": c, "ms/sample": 1000 * med[c] / n,
                  f"ratio_to_{EVAL_BATCH}": med[c] / ref} for c in chunks]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the default cnn at 32 px, 1 round: a smoke run")
    ap.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=1024, help="samples per timed pass (a validation split)")
    ap.add_argument("--out", default=None, help="also write the table as Parquet")
    args = ap.parse_args()
    cases = CASES[:1] if args.quick else CASES
    rounds = 1 if args.quick else args.rounds
    rows = []
    for bb, px in cases:
        n = args.n if bb == "cnn" else args.n // 4  # the large backbones: fewer samples, same chunk sizes
        rows += rows_for(bb, px, n, sorted(set(args.chunks) | {EVAL_BATCH}), args.threads, rounds)
    df = pd.DataFrame(rows)
    print(f"evaluation encode, ms per sample by chunk (EVAL_BATCH = {EVAL_BATCH}); median of {rounds} rounds")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        df.to_parquet(args.out)
    record("bench_eval_batch", df, args.quick)


if __name__ == "__main__":
    main()
