"""The lazy data pipeline against the in-memory path (issue 14): memory and throughput.

The benchmark writes a SEN12MS-layout folder of GeoTIFF chips (32 x 32: S1 2 bands, S2 13 bands,
land cover) of N and 10 N triplets, then, each case in a fresh process (so peak RSS is that case's):

* **memory**: peak RSS (the training process, and the largest DataLoader worker) of one training
  epoch of the default late-fusion model on the ``sen12ms`` loader, read lazily, at N and at 10 N;
  goal: growth under 10 %. The in-memory path (every chip read into tensors first) beside it.
* **throughput**: samples/s of that training epoch, lazy (DataLoader with ``data.num_workers``
  processes, default 1 on 2 CPUs) vs in memory on the same chips; goal >= 0.8x on 2 CPU cores.
* **reader**: samples/s of reading one epoch without training, through the DataLoader (what
  raybal uses) and through Ray Data (``map_batches`` over the indices, ``iter_torch_batches``),
  the alternative docs/data.md weighs against it.

* **generation**: peak RSS of rendering ``synthetic_aerial`` into a fresh cache at 4,000 and 16,000
  training samples (rendered in chunks into memory-mapped files: the peak is bounded by the chunk),
  and of reading the 16,000 back; ``--generate 200000`` adds a set of that size.

The GPU comparison (``--gpu``, goal >= 0.95x) needs a CUDA machine; without one it prints that it
was not run. Table printed and written to ``benchmarks/out/data/bench_data.parquet``.

    python benchmarks/bench_data.py            # N = 800 / 8,000 (~6 minutes on 2 CPU cores)
    python benchmarks/bench_data.py --quick    # N = 100 / 1,000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _record import record  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "data"


def write_chips(root: Path, n: int, size: int = 32, per_scene: int = 100) -> Path:
    """n SEN12MS triplets, per_scene to a scene, classes (IGBP 1 / 10 / 13 / 17) visible in both sensors."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(0)
    igbp = (1, 10, 13, 17)
    for i in range(n):
        scene, k = divmod(i, per_scene)
        roi = root / "ROIs1158_spring"
        c = i % len(igbp)
        arrays = {"s1": (rng.normal(-15 + 2 * c, 3, (2, size, size))).astype(np.float32),
                  "s2": (rng.integers(300, 3000, (13, size, size)) + 500 * c).astype(np.uint16),
                  "lc": np.full((4, size, size), igbp[c], np.uint8)}
        for kind, arr in arrays.items():
            path = roi / f"{kind}_{scene}" / f"ROIs1158_spring_{kind}_{scene}_p{k}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=arr.shape[0],
                               dtype=arr.dtype.name) as dst:
                dst.write(arr)
    (root / "done").write_text(str(n))
    return root


def read_only(args: argparse.Namespace) -> None:
    """Read one epoch of the training split without training: the DataLoader path or Ray Data."""
    import torch

    from raybal.data import load_data
    from raybal.resolve import default_config

    torch.set_num_threads(2)
    cfg = default_config(**{"data.name": "sen12ms", "data.root": args.root, "data.val_fraction": 0.05,
                            "data.test_fraction": 0.05})
    split = load_data(cfg.data).train
    order = split.shard_order(shuffle=True, generator=torch.Generator().manual_seed(0))
    n = len(order) - len(order) % 64
    t0 = time.perf_counter()
    if args.mode == "read_loader":
        startup = 0.0
        t0 = time.perf_counter()
        for _ in split.batches(64, order=order, drop_last=True):
            pass
    else:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        source, indices = split.source, split.indices

        def read(batch: dict) -> dict:
            rows = [source.read(int(indices[i])) for i in batch["i"]]
            out = {m: np.stack([r[0][m] for r in rows]) for m in rows[0][0]}
            out["y"] = np.array([r[1] for r in rows])
            return out

        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = ray.data.from_items([{"i": int(i)} for i in order[:n]]).map_batches(read, batch_size=64)
        for _ in ds.iter_torch_batches(batch_size=64, drop_last=True):
            pass
        ray.shutdown()
    read_s = time.perf_counter() - t0
    print(json.dumps({"samples": len(split), "epoch_s": read_s, "samples_per_s": n / read_s, "load_s": startup,
                      "lazy": True, "workers": split.pipe.num_workers,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def generate(args: argparse.Namespace) -> None:
    """Render synthetic_aerial with n_train = args.n into the cache folder args.root; report peak RSS."""
    from raybal.data import load_data
    from raybal.resolve import default_config

    cfg = default_config(**{"data.n_train": args.n, "data.n_val": 1000, "data.n_test": 1000,
                            "data.cache_dir": args.root})
    t0 = time.perf_counter()
    data = load_data(cfg.data)
    float(data.train.x["eo"][-64:].sum())  # touch the data
    print(json.dumps({"samples": args.n, "epoch_s": time.perf_counter() - t0, "samples_per_s": float("nan"),
                      "load_s": time.perf_counter() - t0, "lazy": False, "workers": 0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_peak_rss_mb": 0.0}))


def child(args: argparse.Namespace) -> None:
    """One case in this process: build the data, run one timed training epoch, print a JSON line."""
    if args.mode.startswith("read_"):
        read_only(args)
        return
    if args.mode == "generate":
        generate(args)
        return
    import torch

    from raybal.balancing import METHODS, MethodContext
    from raybal.data import LazySplit, Split, load_data
    from raybal.resolve import default_config
    from raybal.training.loop import build_for
    from raybal.training.steps import train_epoch

    torch.set_num_threads(2)
    device = torch.device("cuda" if args.gpu else "cpu")
    cfg = default_config(**{"data.name": "sen12ms", "data.root": args.root, "data.val_fraction": 0.05,
                            "data.test_fraction": 0.05, "train.batch_size": 64})
    data = load_data(cfg.data)
    t0 = time.perf_counter()
    if args.mode == "memory":  # every chip read into tensors first, as an in-memory data set holds them
        xs, ys = [], []
        for xb, yb in data.train.batches(256):
            xs.append(xb)
            ys.append(yb)
        data.train = Split({m: torch.cat([x[m] for x in xs]) for m in xs[0]}, torch.cat(ys))
        if args.gpu:
            data.train = data.train.pinned()
    elif args.gpu:
        data.train = data.train.pinned()
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_for(cfg, data).to(device)
    method = METHODS.get("vanilla").obj(cfg.balance.params, MethodContext(
        model=model, modalities=data.modalities, epochs=1, steps_per_epoch=len(data.train) // 64, seed=0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    autocast = torch.autocast(device_type=device.type, enabled=False)
    order = data.train.shard_order(shuffle=True, generator=torch.Generator().manual_seed(0))
    # warm-up: a few batches (allocator, first DataLoader start), not timed
    train_epoch(model, method, opt, data.train.batches(64, order=order[:128], drop_last=True), autocast,
                device=device, num_classes=data.num_classes, task=data.task)
    if args.gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_epoch(model, method, opt, data.train.batches(64, order=order, drop_last=True), autocast,
                device=device, num_classes=data.num_classes, task=data.task)
    if args.gpu:
        torch.cuda.synchronize()
    epoch_s = time.perf_counter() - t0
    n = len(order) - len(order) % 64
    print(json.dumps({
        "samples": len(data.train), "epoch_s": epoch_s, "samples_per_s": n / epoch_s, "load_s": load_s,
        "lazy": isinstance(data.train, LazySplit), "workers": data.train.pipe.num_workers,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def run_case(root: Path, mode: str, gpu: bool, n: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--root", str(root), "--n", str(n)] + (
        ["--gpu"] if gpu else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=800, help="the small set's triplets (the large one has 10x)")
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 100")
    ap.add_argument("--gpu", action="store_true", help="also on CUDA (goal >= 0.95x of in-memory)")
    ap.add_argument("--data-dir", default=str(OUT / "chips"), help="where the GeoTIFF chips are written")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("lazy", "memory", "read_loader", "read_raydata", "generate"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=int, nargs="*", default=[4000, 16000],
                    help="synthetic_aerial training-set sizes whose generation peak RSS is measured")
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    n = 100 if args.quick else args.n
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    import shutil
    import tempfile

    for size in ([500, 2000] if args.quick else args.generate):
        cache = Path(tempfile.mkdtemp(prefix="raybal-gen-"))
        try:
            first = run_case(cache, "generate", False, size)
            again = run_case(cache, "generate", False, size)  # read back from the store
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        for what, r in (("generate", first), ("read back", again)):
            rows.append({"triplets": size, "device": "cpu", "mode": f"synthetic_aerial {what}", **r})
            print(f"  synthetic_aerial n_train={size} {what}: peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"{r['load_s']:.1f} s", flush=True)
    devices = [False]
    if args.gpu:
        import torch

        if torch.cuda.is_available():
            devices.append(True)
        else:
            print("--gpu: no CUDA device here; the GPU comparison was not run")
    for size in (n, 10 * n):
        t0 = time.perf_counter()
        root = write_chips(Path(args.data_dir) / f"sen12ms-{size}", size)
        print(f"{size} triplets written in {time.perf_counter() - t0:.0f} s", flush=True)
        for gpu in devices:
            for mode in ("lazy", "memory") + (("read_loader", "read_raydata") if size == n and not gpu else ()):
                r = run_case(root, mode, gpu)
                rows.append({"triplets": size, "device": "cuda" if gpu else "cpu", "mode": mode, **r})
                print(f"  {mode:6s} {'cuda' if gpu else 'cpu'}: {r['samples_per_s']:.0f} samples/s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    df = pd.DataFrame(rows)
    df.to_parquet(OUT / "bench_data.parquet", index=False)
    record("bench_data", df, args.quick)
    pd.set_option("display.width", 200)
    gen = df[df["mode"].str.startswith("synthetic_aerial")]
    epochs = df[~df["mode"].str.startswith("synthetic_aerial")]
    print("\nbench_data: one training epoch of the default late-fusion model on sen12ms-layout GeoTIFF chips (32 x 32)"
          " (read_*: one epoch read, no training)")
    print(epochs[["triplets", "device", "mode", "workers", "samples_per_s", "epoch_s", "load_s", "peak_rss_mb",
                  "worker_peak_rss_mb"]].round(1).to_string(index=False))
    if len(gen):
        print("\nsynthetic_aerial generation (n_train samples, + 1,000 val + 1,000 test):")
        print(gen[["triplets", "mode", "load_s", "peak_rss_mb"]].rename(columns={"triplets": "n_train"})
              .round(1).to_string(index=False))
    df = df[~df["mode"].str.startswith("synthetic_aerial")]
    rd = df[df["mode"].str.startswith("read_")].set_index("mode")["samples_per_s"]
    if len(rd) == 2:
        print(f"\nreading one epoch ({n} triplets, no training): DataLoader {rd['read_loader']:.0f} samples/s, "
              f"Ray Data {rd['read_raydata']:.0f} samples/s ({rd['read_raydata'] / rd['read_loader']:.2f}x; Ray's "
              f"start-up not counted: {df.loc[df['mode'] == 'read_raydata', 'load_s'].iloc[0]:.1f} s)")
    df = df[~df["mode"].str.startswith("read_")]
    for dev, g in df.groupby("device"):
        lazy = g[g["mode"] == "lazy"].set_index("triplets")
        mem = g[g["mode"] == "memory"].set_index("triplets")
        growth = lazy.loc[10 * n, "peak_rss_mb"] / lazy.loc[n, "peak_rss_mb"] - 1
        mem_growth = mem.loc[10 * n, "peak_rss_mb"] / mem.loc[n, "peak_rss_mb"] - 1
        ratio = (lazy["samples_per_s"] / mem["samples_per_s"]).to_dict()
        goal = 0.95 if dev == "cuda" else 0.8
        print(f"\n{dev}: lazy peak RSS growth N -> 10N: {growth:+.1%} "
              f"(goal < +10%: {'met' if growth < 0.1 else 'MISSED'});"
              f" in memory: {mem_growth:+.1%}")
        print(f"{dev}: lazy / in-memory throughput: " + ", ".join(f"{k}: {v:.2f}x" for k, v in ratio.items())
              + f" (goal >= {goal}x: {'met' if min(ratio.values()) >= goal else 'MISSED'})")
    if not args.gpu:
        print("GPU comparison not run (no --gpu; this machine has no CUDA device)")
    print(f"\nwritten: {OUT / 'bench_data.parquet'}")


if __name__ == "__main__":
    main()
