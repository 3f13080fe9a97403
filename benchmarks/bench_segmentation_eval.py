"""Where a segmentation run's time went, and what chunked evaluation saves (issue 15).

A vanilla U-Net run on 1,500 scenes spent most of its time evaluating, not training: permutation
MU on validation fuses every batch 1 + M x mu_repeats times, and a U-Net's ``fuse`` is its whole
decoder. Fused in one pass per 500-image batch, every decoder layer allocated hundreds of MB, which
on CPU are fresh pages from the kernel each time (system time, page faults). ``measure`` now fuses in
row chunks of ``FUSE_ELEMENTS`` feature elements (``raybal.measure.utilization.fused_loss_and_stat``), and
the per-pixel prediction is ``max(1).indices`` instead of ``argmax(1)``. This prints both side by
side, in one process, on the same model and data: wall, user and system seconds, minor page faults.

    python benchmarks/bench_segmentation_eval.py            # ~2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import resource
import time

import pandas as pd
import torch

import raybal.measure.utilization as U
from raybal.data import load_data
from raybal.resolve import default_config
from raybal.training.loop import build_for


def timed(fn) -> dict:  # noqa: ANN001
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = fn()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {"wall_s": t1 - t0, "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
            "minor_faults": r1.ru_minflt - r0.ru_minflt, "result": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2, help="timed repetitions of each variant")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 scenes, one repetition")
    args = ap.parse_args()
    if args.quick:
        args.n_val, args.repeats = 200, 1
    torch.set_num_threads(2)
    cfg = default_config(**{"data.task": "segmentation", "model.name": "unet", "data.n_train": 64,
                            "data.n_val": args.n_val, "data.n_test": 64})
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_for(cfg, data).eval()

    def mu() -> U.MUResult:
        return U.measure(model, data.val, num_classes=data.num_classes, task="segmentation", n_repeats=3, seed=1)

    default = U.FUSE_ELEMENTS
    rows = []
    for rep in range(args.repeats):
        for name, elements in (("one fuse per 500-image batch (before)", 1 << 60), ("chunked fuse (now)", default)):
            U.FUSE_ELEMENTS = elements
            r = timed(mu)
            rows.append({"variant": name, "rep": rep, **{k: v for k, v in r.items() if k != "result"},
                         "loss": r["result"].loss, "mu_eo": r["result"].shares["eo"]})
    U.FUSE_ELEMENTS = default
    logits = torch.randn(64, data.num_classes, 32, 32)
    for name, fn in (("argmax(1) (before)", lambda: logits.argmax(1)),
                     ("max(1).indices (now)", lambda: logits.max(1).indices)):
        r = timed(lambda fn=fn: [fn() for _ in range(200)])
        rows.append({"variant": f"prediction of 200 x (64, {data.num_classes}, 32, 32): {name}", "rep": 0,
                     **{k: v for k, v in r.items() if k != "result"}})
    df = pd.DataFrame(rows)
    table = df.groupby("variant", sort=False)[["wall_s", "user_s", "sys_s", "minor_faults"]].median()
    pd.set_option("display.width", 200)
    print(f"\npermutation MU of one validation split ({args.n_val} scenes, 3 repeats, M = 2), median of {args.repeats}")
    print(table.round(2).to_string())
    mu_rows = df[df["variant"].str.contains("fuse")]
    before = table.iloc[0]["wall_s"]
    print(f"\nspeed-up of MU: {before / table.iloc[1]['wall_s']:.2f}x; prediction: "
          f"{table.iloc[2]['wall_s'] / table.iloc[3]['wall_s']:.2f}x; same loss in both variants: "
          f"{mu_rows['loss'].max() - mu_rows['loss'].min():.2e} apart, MU eo share "
          f"{mu_rows['mu_eo'].max() - mu_rows['mu_eo'].min():.2e} apart")


if __name__ == "__main__":
    main()
