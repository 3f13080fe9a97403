"""Calibration check of ``synthetic_aerial`` against the NTIRE-21 shape (DESIGN.md §2).

For each seed: EO alone, SAR alone (the other sensor's object removed via
``data.informativeness``), and vanilla fusion with its test MU share and its accuracy under
Gaussian EO noise. Prints a table; ``--out`` also writes it as Parquet.

    python benchmarks/calibrate_aerial.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from raybal.resolve import default_config
from raybal.train import fit


def run(seed: int, overrides: dict, epochs: int) -> dict:
    base = {"train.seed": seed, "data.seed": seed, "train.epochs": epochs, **overrides}
    out: dict = {"seed": seed}
    for name, extra in (("eo_only", {"data.informativeness": {"sar": 0.0}}),
                        ("sar_only", {"data.informativeness": {"eo": 0.0}})):
        r = fit(default_config(**base, **extra))
        out[f"{name}_acc"] = r.final["final.test_accuracy"]
    rob = {"robustness.enabled": True, "robustness.modalities": ["eo"], "robustness.corruptions": ["gaussian"],
           "robustness.splits": ["test"], "robustness.measure_mu": False}
    t = time.perf_counter()
    r = fit(default_config(**base, **rob))
    out["fusion_wall_s"] = time.perf_counter() - t
    out["fusion_acc"] = r.final["final.test_accuracy"]
    out["mu_eo"] = r.final["final.mu.eo"]
    for row in r.robustness:
        out[f"eo_noise_{row['level']:.2f}"] = row["accuracy"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], help="extra dotted override key=value")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from raybal.config import parse_override

    overrides = dict(parse_override(s) for s in args.set)
    rows = [run(s, overrides, args.epochs) for s in args.seeds]
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df.round(3).to_string(index=False))
    if args.out:
        df.to_parquet(args.out)


if __name__ == "__main__":
    main()
