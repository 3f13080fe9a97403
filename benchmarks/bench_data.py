"""Reading real-data layouts: raw files read lazily, prepared record shards and the in-memory path
(issues 14 and 37): memory, throughput, and the shard format.

The benchmark writes SEN12MS-layout GeoTIFF chips (32 x 32: S1 2 bands, S2 13 bands, land cover) and
So2Sat-layout HDF5 files (32 x 32: sen1 8, sen2 10 bands) of N and 10 N samples, packs each with
``raybal prepare`` (its throughput measured), then, each case in a fresh process (so peak RSS is that
case's), one timed training epoch of the default late-fusion model:

* **lazy**: the loader reading its files on demand (DataLoader, ``data.num_workers`` processes, default
  1 on 2 CPUs);
* **prepared**: the ``prepared`` data set on the packed store, by plain path (read in the training
  process: the default on 2 CPUs); **prepared_url**: the same through fsspec (a ``file://`` URL: the code
  path of ``s3://`` / ``gs://``; one reader process, the default for URLs), **prepared_url_inproc**: that
  URL read in the training process (fsspec's reader against the plain path's);
* **memory**: every sample read into tensors first (the in-memory path).

Goals: prepared >= 0.9x in-memory samples/s on 2 cores; peak RSS growth N -> 10 N under 10 % when read
lazily or from shards. ``read_loader`` / ``read_raydata``: reading one SEN12MS epoch without training,
through the DataLoader (what raybal uses) and Ray Data (docs/data.md weighs it).

**formats**: the candidate layouts for prepared data, read one shuffled epoch (no training) through
raybal's pipeline in one process from the 10 N SEN12MS samples: record shards read with ``pread`` (the chosen one), the
same through fsspec, one memory-mapped ``.npy`` per modality, chunked HDF5, Parquet row groups, and tar
shards in WebDataset's layout (which can only stream in order: no per-epoch global shuffle); Zarr v3 and
LitData when installed (``pip install -e ".[bench]"`` adds Zarr; LitData's install pulls a CUDA torch).

**generation**: peak RSS of rendering ``synthetic_aerial`` into a fresh cache at 4,000 and 16,000
training samples, and of reading the 16,000 back; ``--generate 200000`` adds a set of that size.

The GPU comparison (``--gpu``, goal >= 0.95x) needs a CUDA machine; without one it prints that it
was not run. Table printed and written to ``benchmarks/out/data/bench_data.parquet``.

    python benchmarks/bench_data.py            # N = 800 / 8,000 (~12 minutes on 2 CPU cores)
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


def write_chips(root: Path, n: int, size: int = 32, per_scene: int = 0) -> Path:
    """n SEN12MS triplets, per_scene to a scene (default 100, fewer for a small n: at least 20 scenes to
    split by), classes (IGBP 1 / 10 / 13 / 17) visible in both sensors."""
    per_scene = per_scene or min(100, max(5, n // 20))
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


def write_so2sat(root: Path, n: int) -> Path:
    """So2Sat LCZ42's three HDF5 files: n training patches, n // 10 (at least 32) validation and test."""
    import h5py

    if (root / "done").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in (("training.h5", n), ("validation.h5", max(32, n // 10)), ("testing.h5", max(32, n // 10))):
        y = rng.integers(0, 17, count)
        with h5py.File(root / name, "w") as f:
            s1 = f.create_dataset("sen1", (count, 32, 32, 8), dtype="f8", chunks=(1, 32, 32, 8))
            s2 = f.create_dataset("sen2", (count, 32, 32, 10), dtype="f8", chunks=(1, 32, 32, 10))
            for a in range(0, count, 1000):
                b = min(count, a + 1000)
                s1[a:b] = rng.normal(0, 0.5, (b - a, 32, 32, 8)) + 0.05 * y[a:b, None, None, None]
                s2[a:b] = rng.normal(0.1, 0.02, (b - a, 32, 32, 10)) + 0.01 * y[a:b, None, None, None]
            f["label"] = np.eye(17)[y]
    (root / "done").write_text(str(n))
    return root


def source_config(kind: str, root: str) -> dict:
    """The [data] overrides of a benchmark source: SEN12MS chips or So2Sat files."""
    if kind == "so2sat":
        return {"data.name": "so2sat", "data.root": root}
    return {"data.name": "sen12ms", "data.root": root, "data.val_fraction": 0.05, "data.test_fraction": 0.05}


def run_config(args: argparse.Namespace, **extra: object):  # noqa: ANN201
    from raybal.resolve import default_config

    if args.mode.startswith("prepared") or args.mode.startswith("read_prepared"):
        path = Path(args.store).resolve()
        url = "_url" in args.mode
        over = {"data.name": "prepared", "data.path": path.as_uri() if url else str(path)}
        if args.mode == "prepared_url_inproc":  # fsspec's reader against the plain path's, both in-process
            over["data.num_workers"] = 0
    else:
        over = source_config(args.dataset, args.root)
    return default_config(**over, **extra)


def prepare_case(args: argparse.Namespace) -> None:
    """``raybal prepare`` of the source into args.store (fresh): its samples/s and peak RSS."""
    import shutil

    from raybal.data.prepare import prepare
    from raybal.resolve import default_config

    shutil.rmtree(args.store, ignore_errors=True)
    cfg = default_config(**source_config(args.dataset, args.root))
    t0 = time.perf_counter()
    meta = prepare(cfg.data, args.store)
    took = time.perf_counter() - t0
    n = sum(v["n"] for v in meta["splits"].values())
    print(json.dumps({"samples": n, "epoch_s": took, "samples_per_s": n / took, "load_s": took, "lazy": True,
                      "workers": 1, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def read_only(args: argparse.Namespace) -> None:
    """Read one epoch of the training split without training: the DataLoader path or Ray Data."""
    import torch

    from raybal.data import load_data
    from raybal.resolve import default_config

    torch.set_num_threads(2)
    cfg = default_config(**source_config("sen12ms", args.root))
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
    if args.mode == "prepare":
        prepare_case(args)
        return
    if args.mode.startswith("format_"):
        from _formats import read_format

        print(json.dumps(read_format(args.mode[len("format_"):], args.store, Path(args.root))))
        return
    import torch

    from raybal.balancing import METHODS, MethodContext
    from raybal.data import LazySplit, Split, load_data
    from raybal.training.loop import build_for
    from raybal.training.steps import train_epoch

    torch.set_num_threads(2)
    device = torch.device("cuda" if args.gpu else "cpu")
    cfg = run_config(args, **{"train.batch_size": 64})
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


def run_case(root: Path, mode: str, gpu: bool, n: int = 0, dataset: str = "sen12ms", store: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--root", str(root), "--n", str(n),
           "--dataset", dataset, "--store", str(store or "")] + (["--gpu"] if gpu else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=800, help="the small sets' samples (the large ones have 10x)")
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 100")
    ap.add_argument("--gpu", action="store_true", help="also on CUDA (goal >= 0.95x of in-memory)")
    ap.add_argument("--data-dir", default=str(OUT / "chips"), help="where the files and stores are written")
    ap.add_argument("--only", nargs="*", choices=("generate", "sen12ms", "so2sat", "formats"),
                    default=["generate", "sen12ms", "so2sat", "formats"], help="sections to run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", default="sen12ms", help=argparse.SUPPRESS)
    ap.add_argument("--store", default="", help=argparse.SUPPRESS)
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

    for size in (([500, 2000] if args.quick else args.generate) if "generate" in args.only else []):
        cache = Path(tempfile.mkdtemp(prefix="raybal-gen-"))
        try:
            first = run_case(cache, "generate", False, size)
            again = run_case(cache, "generate", False, size)  # read back from the store
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        for what, r in (("generate", first), ("read back", again)):
            rows.append({"dataset": "synthetic_aerial", "triplets": size, "device": "cpu",
                         "mode": f"synthetic_aerial {what}", **r})
            print(f"  synthetic_aerial n_train={size} {what}: peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"{r['load_s']:.1f} s", flush=True)
    devices = [False]
    if args.gpu:
        import torch

        if torch.cuda.is_available():
            devices.append(True)
        else:
            print("--gpu: no CUDA device here; the GPU comparison was not run")
    data_dir = Path(args.data_dir)
    for dataset in [d for d in ("sen12ms", "so2sat") if d in args.only]:
        for size in (n, 10 * n):
            t0 = time.perf_counter()
            writer = write_chips if dataset == "sen12ms" else write_so2sat
            root = writer(data_dir / f"{dataset}-{size}", size)
            store = data_dir / f"{dataset}-{size}.prepared"
            print(f"{dataset}: {size} samples written in {time.perf_counter() - t0:.0f} s", flush=True)
            r = run_case(root, "prepare", False, dataset=dataset, store=store)
            rows.append({"dataset": dataset, "triplets": size, "device": "cpu", "mode": "prepare", **r})
            print(f"  prepare: {r['samples_per_s']:.0f} samples/s ({r['epoch_s']:.1f} s)", flush=True)
            for gpu in devices:
                modes = ["lazy", "prepared", "prepared_url", "prepared_url_inproc", "memory"]
                if dataset == "sen12ms" and size == n and not gpu:
                    modes += ["read_loader", "read_raydata"]
                for mode in modes:
                    r = run_case(root, mode, gpu, dataset=dataset, store=store)
                    rows.append({"dataset": dataset, "triplets": size, "device": "cuda" if gpu else "cpu",
                                 "mode": mode, **r})
                    print(f"  {mode:12s} {'cuda' if gpu else 'cpu'}: {r['samples_per_s']:.0f} samples/s, "
                          f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    formats = []
    if "formats" in args.only:
        from _formats import FORMATS

        root = write_chips(data_dir / f"sen12ms-{10 * n}", 10 * n)
        store = data_dir / f"sen12ms-{10 * n}.prepared"
        if not (store / "prepared.json").is_file():
            run_case(root, "prepare", False, store=store)
        work = data_dir / f"formats-{10 * n}"
        for name in FORMATS:
            r = run_case(work, f"format_{name}", False, store=store)
            formats.append(r)
            print(f"  format {name:15s}: {r['samples_per_s']:.0f} samples/s {r.get('note', '')}", flush=True)
    df = pd.DataFrame(rows)
    fmt = pd.DataFrame(formats)
    if len(df):
        df.to_parquet(OUT / "bench_data.parquet", index=False)
        record("bench_data", df, args.quick)
    if len(fmt):  # its own record: the formats section can be re-run alone (--only formats)
        fmt = fmt.assign(dataset="sen12ms", samples=fmt["samples"].fillna(0))
        fmt.to_parquet(OUT / "bench_data_formats.parquet", index=False)
        record("bench_data_formats", fmt, args.quick)
    if len(df):
        summarise(df, n)
    if len(fmt):
        print(f"\nshard formats: one shuffled epoch of the {int(fmt['samples'].max())} SEN12MS training samples "
              "read through raybal's pipeline in one process, the second of two (tar_webdataset: streamed in order)")
        print(fmt[["format", "global_shuffle", "samples_per_s", "epoch_s", "disk_mb", "peak_rss_mb", "note"]]
              .round(1).to_string(index=False))
    if not args.gpu:
        print("GPU comparison not run (no --gpu; this machine has no CUDA device)")
    print(f"\nwritten: {OUT}")


def summarise(df: pd.DataFrame, n: int) -> None:
    pd.set_option("display.width", 200)
    cols = ["dataset", "triplets", "device", "mode", "workers", "samples_per_s", "epoch_s", "load_s", "peak_rss_mb",
            "worker_peak_rss_mb"]
    gen = df[df["mode"].str.startswith("synthetic_aerial")]
    epochs = df[df["dataset"].isin(["sen12ms", "so2sat"]) & ~df["mode"].str.startswith("format ")]
    if len(epochs):
        print("\nbench_data: one training epoch of the default late-fusion model (32 x 32 samples); prepare: packing "
              "every split; read_*: one epoch read, no training")
        print(epochs[cols].rename(columns={"triplets": "samples"}).round(1).to_string(index=False))
    if len(gen):
        print("\nsynthetic_aerial generation (n_train samples, + 1,000 val + 1,000 test):")
        print(gen[["triplets", "mode", "load_s", "peak_rss_mb"]].rename(columns={"triplets": "n_train"})
              .round(1).to_string(index=False))
    rd = epochs[epochs["mode"].str.startswith("read_")].set_index("mode")["samples_per_s"]
    if len(rd) == 2:
        print(f"\nreading one SEN12MS epoch ({n} samples, no training): DataLoader {rd['read_loader']:.0f} samples/s, "
              f"Ray Data {rd['read_raydata']:.0f} samples/s ({rd['read_raydata'] / rd['read_loader']:.2f}x; Ray's "
              f"start-up not counted: {epochs.loc[epochs['mode'] == 'read_raydata', 'load_s'].iloc[0]:.1f} s)")
    train = epochs[epochs["mode"].isin(["lazy", "prepared", "prepared_url", "prepared_url_inproc", "memory"])]
    for (dataset, dev), g in train.groupby(["dataset", "device"]):
        t = g.pivot_table(index="triplets", columns="mode", values="samples_per_s")
        rss = g.pivot_table(index="triplets", columns="mode", values="peak_rss_mb")
        goal = 0.95 if dev == "cuda" else 0.9
        print(f"\n{dataset} {dev}:")
        for mode in ("lazy", "prepared", "prepared_url", "prepared_url_inproc"):
            if mode not in t:
                continue
            ratio = (t[mode] / t["memory"]).to_dict()
            growth = rss.loc[10 * n, mode] / rss.loc[n, mode] - 1 if len(rss) == 2 else float("nan")
            verdict = ("" if mode == "lazy" else
                       f" (goal >= {goal}x: {'met' if min(ratio.values()) >= goal else 'MISSED'})")
            print(f"  {mode:19s} / in memory: " + ", ".join(f"N={k}: {v:.2f}x" for k, v in ratio.items())
                  + verdict + f"; peak RSS N -> 10N {growth:+.1%} (goal < +10%: "
                  f"{'met' if growth < 0.1 else 'MISSED'})")
        mem_growth = rss.loc[10 * n, "memory"] / rss.loc[n, "memory"] - 1 if len(rss) == 2 else float("nan")
        print(f"  in memory: peak RSS N -> 10N {mem_growth:+.1%}")


if __name__ == "__main__":
    main()
