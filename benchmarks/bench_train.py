"""Training throughput per backbone, fit() against a plain PyTorch loop, and the cost of MU evaluation.

Four tables, each measured side by side in one process:

1. **Backbones** (cnn, resnet18, resnet34, resnet50, convnext_tiny at 32 / 64 / 128 px): training samples/s
   through ``raybal.training.steps.train_step`` (the one step ``fit()`` runs), and the mu_target / vanilla
   step-time ratio per backbone (goal <= 1.10x: encode once, shuffle features, DESIGN §2).
   vanilla and mu_target steps alternate, so machine noise hits both alike.
2. **fit() vs a plain loop**: the same model, data, batches, optimizer and cosine schedule, trained
   by a hand-written loop (forward, cross-entropy, backward, step) that also computes the val and
   test accuracy each epoch (fit records both), and by ``fit()`` with everything it adds on top
   (validation MU each epoch, model selection, the final measures: test MU, the mean-ablation
   utilization). Goal: fit() within 1.10x of that loop's wall time on CPU, in the same memory
   layout. Also shown: the loop without evaluation, and in PyTorch's default NCHW layout (what a
   hand-written loop gets without ``channels_last``).
3. **MU evaluation**: a plain evaluation pass over val vs permutation MU (encode once +
   1 + M x repeats fusion passes) vs the naive MU that re-encodes shuffled inputs.
4. **train.compile**: the default model's step, eager vs ``torch.compile``, with the compile time
   and the number of steps after which compiling pays off (full runs only).

No GPU is lent to this project's CI; on a GPU node pass ``--device cuda --precision bf16`` (and
``--sizes 64 128 --batch 256``) to measure the GPU path (channels-last, bf16 autocast).

    python benchmarks/bench_train.py [--quick] [--out benchmarks/out/train.parquet]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import pandas as pd
import torch
import torch.nn.functional as F

from raybal.balancing import METHODS, MethodContext
from raybal.data import load_data
from raybal.measure.utilization import EVAL_BATCH, measure
from raybal.resolve import default_config
from raybal.training.loop import build_for, fit, seed_everything, use_channels_last
from raybal.training.steps import to_device, train_step

BACKBONES = ("cnn", "resnet18", "resnet34", "resnet50", "convnext_tiny")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def backbone_rows(backbones, sizes, batch: int, steps: int, device: torch.device, precision: str) -> list[dict]:
    rows = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for bb in backbones:
        for size in sizes:
            over = {"model.backbone": bb, "data.image_size": size, "data.n_train": batch * 2, "data.n_val": 10,
                    "data.n_test": 10, "train.batch_size": batch}
            runners = {}
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for name, extra in (("vanilla", {}), ("mu_target", {"balance.method": "mu_target",
                                                                "balance.target": {"eo": 0.75, "sar": 0.25}})):
                cfg = default_config(**over, **extra)
                data = load_data(cfg.data)
                seed_everything(0)
                model = build_for(cfg, data).to(device)
                cl = use_channels_last("auto", device, model)
                if cl:
                    model = model.to(memory_format=torch.channels_last)
                method = METHODS.get(cfg.balance.method).obj(cfg.balance.params, MethodContext(
                    model=model, modalities=data.modalities, epochs=8, steps_per_epoch=2, seed=0))
                method.on_epoch_start(8)  # fully active
                model.train()
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                xb, yb = next(data.train.batches(batch))
                runners[name] = (model, method, opt, to_device(xb, device, cl), yb.to(device))
            times: dict[str, list[float]] = {k: [] for k in runners}
            for r in range(steps + 1):  # step 0 is a warm-up
                for name, (model, method, opt, xb, yb) in runners.items():
                    _sync(device)
                    t = time.perf_counter()
                    train_step(model, method, opt, xb, yb, autocast)
                    _sync(device)
                    if r > 0:
                        times[name].append(time.perf_counter() - t)
            van, mu = statistics.median(times["vanilla"]), statistics.median(times["mu_target"])
            mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            rows.append({"backbone": bb, "px": size, "batch": batch, "vanilla samples/s": batch / van,
                         "mu_target samples/s": batch / mu, "mu_target / vanilla": mu / van, "gpu_mem_GiB": mem})
            print(f"  {bb:9s} {size:4d} px: {batch / van:8.1f} samples/s, mu_target {mu / van:.3f}x", flush=True)
    return rows


@torch.no_grad()
def plain_accuracy(model, split, device: torch.device, channels_last: bool) -> float:
    model.eval()
    correct = torch.zeros((), device=device)
    for xb, yb in split.batches(EVAL_BATCH):  # raybal's own evaluation batch
        correct += (model(to_device(xb, device, channels_last)).logits.argmax(1) == yb.to(device)).sum()
    model.train()
    return float(correct) / len(split)


def plain_loop(cfg, data, device: torch.device, channels_last: bool, evaluate: bool) -> float:
    """The same training as fit(), with a per-epoch val and test accuracy if ``evaluate``: seconds."""
    tc = cfg.train
    seed_everything(tc.seed)
    model = build_for(cfg, data).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.epochs)
    t0 = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        model.train()
        g = torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
        order = data.train.shard_order(shuffle=True, generator=g, rank=0, world=1, global_batch=tc.batch_size)
        for xb, yb in data.train.batches(tc.batch_size, order=order, drop_last=True):
            xb, yb = to_device(xb, device, channels_last), yb.to(device)
            loss = F.cross_entropy(model(xb).logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if evaluate:
            plain_accuracy(model, data.val, device, channels_last)
            plain_accuracy(model, data.test, device, channels_last)
    _sync(device)
    return time.perf_counter() - t0


def fit_rows(n: int, epochs: int, rounds: int, device: torch.device) -> list[dict]:
    """fit() at the default memory layout (auto) and at channels_last, each against a plain loop in the
    same layout; rows in alternation, best of ``rounds`` each."""
    base = {"data.n_train": n, "data.n_val": n // 4, "data.n_test": n // 4, "train.epochs": epochs,
            "train.use_gpu": device.type == "cuda"}
    cfgs = {"auto": default_config(**base),
            "channels_last": default_config(**base, **{"train.memory_format": "channels_last"})}
    data = load_data(cfgs["auto"].data)
    layouts = {k: use_channels_last(c.train.memory_format, device, build_for(c, data)) for k, c in cfgs.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for fmt, cfg in cfgs.items():
            cl = layouts[fmt]
            for what, ev in (("plain loop, train only", False), ("plain loop, train + val/test accuracy", True)):
                times.setdefault((fmt, what), []).append(plain_loop(cfg, data, device, cl, ev))
            t0 = time.perf_counter()
            fit(cfg, data=data)
            times.setdefault((fmt, "fit()"), []).append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    rows = []
    for fmt in cfgs:
        name = f"{fmt} ({'channels_last' if layouts[fmt] else 'NCHW'})"
        ref = best[(fmt, "plain loop, train + val/test accuracy")]
        for what in ("plain loop, train only", "plain loop, train + val/test accuracy", "fit()"):
            t = best[(fmt, what)]
            rows.append({"memory_format": name, "run": f"{what}, {epochs} epochs", "seconds": t,
                         "train samples/s": n * epochs / t, "ratio_to_plain_with_eval": t / ref})
    return rows


def compile_rows(device: torch.device, batch: int = 64, rounds: int = 3) -> list[dict]:
    """train_step on the default model, eager vs ``torch.compile`` (train.compile): compile time and step time."""
    cfg = default_config(**{"data.n_train": 8 * batch, "data.n_val": 10, "data.n_test": 10})
    data = load_data(cfg.data)
    batches = [(to_device(x, device), y.to(device)) for x, y in data.train.batches(batch, drop_last=True)]
    rows, base = [], None
    for comp in (False, True):
        seed_everything(0)
        model = build_for(cfg, data).to(device)
        method = METHODS.get("vanilla").obj(None, MethodContext(model=model, modalities=data.modalities, epochs=1,
                                                                steps_per_epoch=len(batches), seed=0))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        run = torch.compile(model) if comp else model
        t0 = time.perf_counter()
        train_step(run, method, opt, *batches[0], nullcontext())
        _sync(device)
        first = time.perf_counter() - t0
        ts = []
        for _ in range(rounds):
            for xb, yb in batches:
                t = time.perf_counter()
                train_step(run, method, opt, xb, yb, nullcontext())
                _sync(device)
                ts.append(time.perf_counter() - t)
        step = statistics.median(ts)
        base = base or step
        rows.append({"run": "torch.compile" if comp else "eager", "first step (s)": first, "step (ms)": 1000 * step,
                     "step ratio": step / base, "break-even steps": (first / (base - step)) if step < base else None})
    return rows


@torch.no_grad()
def naive_mu(model, split, n_repeats: int) -> None:
    """Permutation MU by re-encoding shuffled inputs (the cost feature shuffling avoids)."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    for xb, yb in split.batches(500):
        F.cross_entropy(model(xb).logits, yb)
        for m in model.modalities:
            for _ in range(n_repeats):
                xs = dict(xb)
                xs[m] = xb[m][torch.randperm(len(yb), generator=g)]
                F.cross_entropy(model(xs).logits, yb)


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def mu_rows(n: int) -> list[dict]:
    cfg = default_config(**{"data.n_train": n, "data.n_val": n // 4, "data.n_test": n // 4})
    data = load_data(cfg.data)
    model = build_for(cfg, data)
    r = cfg.train.mu_repeats
    kw = dict(num_classes=data.num_classes, task=data.task)
    t_eval = timed(lambda: measure(model, data.val, modalities=(), **kw))
    t_mu = timed(lambda: measure(model, data.val, n_repeats=r, **kw))
    t_naive = timed(lambda: naive_mu(model, data.val, r))
    return [{"measure": "plain eval of val (s)", "value": t_eval, "ratio": 1.0},
            {"measure": f"MU eval, feature shuffle, {r} repeats (s)", "value": t_mu, "ratio": t_mu / t_eval},
            {"measure": f"MU eval, input re-encode, {r} repeats (s)", "value": t_naive, "ratio": t_naive / t_eval}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="resnet18 at 32 px, small data: a smoke run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per backbone and size")
    ap.add_argument("--epochs", type=int, default=8,
                    help="epochs of the fit() vs plain-loop comparison (train.epochs' default)")
    ap.add_argument("--out", default=None, help="also write the tables as Parquet (one file, a 'table' column)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    quick = args.quick
    backbones = ("cnn", "resnet18") if quick else BACKBONES
    sizes = [32] if quick else args.sizes
    print(f"bench_train: {args.threads} threads, device {device}, precision {args.precision}")
    bb = pd.DataFrame(backbone_rows(backbones, sizes, args.batch, 1 if quick else args.steps, device, args.precision))
    fr = pd.DataFrame(fit_rows(1000 if quick else 4000, 2 if quick else args.epochs, 1 if quick else 2, device))
    mr = pd.DataFrame(mu_rows(1000 if quick else 4000))
    cr = pd.DataFrame(compile_rows(device)) if not quick else pd.DataFrame()
    fmt = {"float_format": lambda v: f"{v:.3f}"}
    print("\nbackbones: training samples/s through train_step, and mu_target / vanilla step time")
    print(bb.drop(columns=[] if device.type == "cuda" else ["gpu_mem_GiB"]).to_string(index=False, **fmt))
    print("\nfit() vs a plain PyTorch loop (same model, data, optimizer, schedule; default late cnn, 32 px)")
    print(fr.to_string(index=False, **fmt))
    print("\nMU evaluation vs a plain evaluation pass (val split)")
    print(mr.to_string(index=False, **fmt))
    if len(cr):
        print("\ntrain.compile: train_step on the default model, eager vs torch.compile "
              "(first step includes compiling)")
        print(cr.to_string(index=False, **fmt))
    if args.out:
        pd.concat([bb.assign(table="backbones"), fr.assign(table="fit_vs_plain"), mr.assign(table="mu_eval"),
                   cr.assign(table="compile")]
                  ).to_parquet(args.out)


if __name__ == "__main__":
    main()
