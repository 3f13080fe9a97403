"""Calibration check of ``synthetic_aerial`` against the NTIRE-21 shape (DESIGN.md §2).

For each seed: EO alone, SAR alone (the other sensor's object removed via
``data.informativeness``), and vanilla fusion with its test MU share and its accuracy under
Gaussian EO noise. Prints a table; ``--out`` also writes it as Parquet.

    python benchmarks/calibrate_aerial.py --seeds 0 1 2
    python benchmarks/calibrate_aerial.py --task segmentation   # the U-Net on per-pixel masks (mIoU)

With ``--task segmentation`` the columns are mIoU (``*_acc`` = mIoU) and the sizes are the
segmentation benchmark's (``SEGMENTATION`` below: 1,500 training scenes, 500 val / test).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from raybal.resolve import default_config
from raybal.training.loop import fit

ONLY_FUSION = False
SEGMENTATION = {"data.task": "segmentation", "model.name": "unet", "data.n_train": 1500, "data.n_val": 500,
                "data.n_test": 500}


def run(seed: int, overrides: dict, epochs: int) -> dict:
    base = {"train.seed": seed, "data.seed": seed, "train.epochs": epochs, **overrides}
    metric = "miou" if base.get("data.task") == "segmentation" else "accuracy"
    out: dict = {"seed": seed}
    for name, extra in () if ONLY_FUSION else (("eo_only", {"data.informativeness": {"sar": 0.0}}),
                        ("sar_only", {"data.informativeness": {"eo": 0.0}})):
        r = fit(default_config(**base, **extra, **{"train.mu_every": epochs}))
        out[f"{name}_acc"] = r.final[f"final.test_{metric}"]
    rob = {"robustness.enabled": True, "robustness.modalities": ["eo"], "robustness.corruptions": ["gaussian"],
           "robustness.splits": ["test"], "robustness.measure_mu": False}
    t = time.perf_counter()
    r = fit(default_config(**base, **rob))
    out["fusion_wall_s"] = time.perf_counter() - t
    out["fusion_acc"] = r.final[f"final.test_{metric}"]
    out["mu_eo"] = r.final["final.mu.eo"]
    for row in r.robustness:
        out[f"eo_noise_{row['level']:.2f}"] = row[metric]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], help="extra dotted override key=value")
    ap.add_argument("--task", choices=["classification", "segmentation"], default="classification")
    ap.add_argument("--only-fusion", action="store_true", help="skip the EO-only / SAR-only runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from raybal.config import parse_override

    overrides = {**(SEGMENTATION if args.task == "segmentation" else {}), **dict(parse_override(s) for s in args.set)}
    global ONLY_FUSION
    ONLY_FUSION = args.only_fusion
    rows = [run(s, overrides, args.epochs) for s in args.seeds]
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df.round(3).to_string(index=False))
    if args.out:
        df.to_parquet(args.out)


if __name__ == "__main__":
    main()
