"""
The GPU report: one command measures what this project promises and prints one Markdown table (the
device, torch and CUDA versions in its caption) to paste into BENCHMARKS.md.

    python bench.py                       # one H100 / H200: about 8 minutes, compilation included
    python bench.py --parts train,run     # some of the parts
    python bench.py --tiny                # every part at toy sizes, on a CPU (tests/test_bench.py)

A measurement that would start after its part's BUDGET (seconds) is spent is skipped. The parts:
train     DiT-B/2 and XL/2, micro-batch 32 (the paper's 256 on 8 GPUs): train_imagenet.py's step, made
          of its pieces (trainer.Objective on soflow_loss, its inputs(), trainer.train_step: loss,
          backward, gradient norm, Adam, EMA), the latents already on the GPU (the script copies them
          asynchronously). Its configuration on CUDA, bf16 + torch.compile (trainer.compile_network) +
          fused attention, against the same step as the authors' release runs (train.py): fp32, TF32, eager.
          TFLOP/s of the analytic count (trainer.step_flops), MFU against the dense bf16 peak, peak
          memory (max_memory_allocated: weights, gradients, Adam, EMA, activations).
meanflow  SoFlow against MeanFlow (baselines.meanflow_loss), DiT-B/2, the same step, bf16, eager. Its
          torch.func.jvp needs math attention (dit.set_attention): SoFlow with math attention as the
          authors compared them (1.19x the speed, 0.76x the memory), and fused.
sample    One-step sampling, DiT-XL/2, batch 256, bf16: eager (sample.py), then with an SD-VAE-sized decoder
          (sd-vae-ft-mse's config, random weights, fp32, 32 a call), and compiled (sample.py --compile).
unet      train_cifar.py's step on CUDA: the U-Net, micro-batch 128, bf16, compiled, fallback_random;
          the augmentation's labels are drawn, the images not resampled (one grid_sample a step).
run       torchrun train_imagenet.py: DiT-B/4, synthetic latents in prepare_imagenet.py's format, 32
          images a GPU, 100 steps, stopped at 50 and resumed, a process a GPU (NCCL from two GPUs; with
          one, no process group). Checks finite losses, the checkpoint, the resume; img/s and MFU: the
          median of its log.csv rows whose time includes no compilation.
Timing: two untimed steps (the first compiles), then the mean of `iters` steps between two syncs; on a
GPU one more step under torch.cuda.set_sync_debug_mode counts host syncs. 'graphs' are compiled in the
untimed steps, 'recompiled' in the timed ones. --tiny: the CPU (gloo), torch.compile's 'eager' backend
(Dynamo's graphs and guards; AOTAutograd and inductor take minutes on a CPU); it measures nothing.
"""

import argparse
import csv
import dataclasses
import gc
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
import torch

import baselines
import checkpoints
import dit
import soflow
import trainer
import unet

PARTS = ("train", "meanflow", "sample", "unet", "run")
BUDGET = dict(train=200, meanflow=40, sample=50, unet=60, run=120)     # seconds on one H100 / H200, 470 in all
VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=256)
FULL = dict(dits=("XL/2", "B/2"), mf_model="B/2", sample_model="XL/2", dit={}, batch=32, sample_batch=256, vae=VAE,
            unet={}, unet_batch=128, iters=10, latent=(4, 32, 32), classes=1000, run=["--model=B/4"], steps=100, log=10)
TINY = dict(FULL, dits=("T/2",), mf_model="T/2", sample_model="T/2", batch=8, sample_batch=8, iters=2, latent=(4, 8, 8),
            dit=dict(depth=1, hidden_size=32, num_heads=2, input_size=8, num_classes=10), classes=10, steps=8, log=2,
            vae=dict(VAE, block_out_channels=(8, 16), down_block_types=VAE["down_block_types"][:2],
                     up_block_types=VAE["up_block_types"][:2], layers_per_block=1, norm_num_groups=4),
            unet=dict(img_resolution=16, model_channels=16, channel_mult=(1,), num_blocks=1, noise_channels=16, emb_mult=1),
            unet_batch=8, run=["--model=T/2", "--depth=1", "--hidden_size=32", "--num_heads=2", "--num_workers=0"])
FAILED = []                                       # the measurements that raised, for the exit status


def timed(dev, P, deadline, batch, build, iters=None):
    """Measure build() -> (step, operations of a step or None) on `batch` images from a clean slate. None once
    the part's time is spent; {'error'} after out of memory, a failed kernel or compilation, a missing package."""
    if time.perf_counter() > deadline:
        return None
    torch._dynamo.reset()
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    graphs = lambda: torch._dynamo.utils.counters["stats"]["unique_graphs"]
    sync = lambda: dev.type == "cuda" and torch.cuda.synchronize(dev)
    try:
        step, flops = build()
        g0, t0 = graphs(), time.perf_counter()
        step(), sync()
        first = time.perf_counter() - t0
        step(), sync()
        g1, t0, iters = graphs(), time.perf_counter(), iters or P.iters
        for _ in range(iters):
            step()
        sync()
    except (RuntimeError, ImportError) as e:
        traceback.print_exc()
        return dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    sec = (time.perf_counter() - t0) / iters
    r = dict(first=first, sec=sec, img_s=batch / sec, graphs=g1 - g0, recompiled=graphs() - g1, syncs=None,
             rate=flops and flops / sec / 1e12, peak=torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None)
    r["mfu"] = r["rate"] and P.peak and r["rate"] / P.peak
    if dev.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
        torch.cuda.set_sync_debug_mode(0)
        sync()
        r["syncs"] = sum("synchroniz" in str(w.message) for w in caught)
    return r


def inputs(mean, std, y):
    """train_imagenet.py's inputs(): a fresh latent each time an image is used."""
    return (mean + std * torch.randn_like(std)) * checkpoints.LATENT_SCALE, y, None


def train_step(net, model, data, dev, precision, **optimizer):
    """trainer.train_step on one micro-batch in one process, as the training scripts call it."""
    C = argparse.Namespace(lr=1e-4, weight_decay=0.0, grad_clip=0.0, seed=0, **optimizer)
    ema = trainer.EMA(net, 0.9999, *((16, "float64") if C.optimizer == "radam" else ()))   # train_cifar.py's EMA
    opt, count = trainer.make_optimizer(C, net, dev), itertools.count()
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    return lambda: trainer.train_step(model, opt, ema, net, data, next(count), C, 0, 1, dev, autocast)


def dit_step(dev, P, name, precision, compiled, attn="fused", loss="soflow"):
    """train_imagenet.py's step (loss 'soflow'), or the same with the MeanFlow loss ('meanflow')."""
    net = dit.dit_from_name(name, attn=attn, **P.dit).to(dev)
    fwd = trainer.compile_network(net, P.backend) if compiled else net
    cfg = soflow.preset("imagenet", num_classes=net.num_classes)
    if loss == "soflow":
        model, flops = trainer.Objective(fwd, cfg, inputs), trainer.step_flops(dit.flops(net.config), cfg, P.batch, 1, 1)
    else:
        mf = dataclasses.replace(baselines.MEANFLOW_IMAGENET, num_classes=net.num_classes)
        model, flops = (lambda step, *mb: baselines.meanflow_loss(fwd, mf, *inputs(*mb)[:2])), None
    mean = 5 * torch.randn(P.batch, net.in_channels, net.input_size, net.input_size, device=dev)   # as latents
    data = [(mean, torch.full_like(mean, 0.1), torch.randint(0, net.num_classes, (P.batch,), device=dev))]
    return train_step(net, model, data, dev, precision, optimizer="adam", beta1=0.9, beta2=0.99), flops


def sample_step(dev, P, compiled, vae=False):
    """One-step sampling of a batch (bf16 autocast), then the latents decoded 32 at a time if vae."""
    if vae:                                           # diffusers' AutoencoderKL, P.vae's architecture, random weights
        from diffusers.models import AutoencoderKL
        vae = AutoencoderKL(**P.vae).to(dev).eval().requires_grad_(False)
    net = dit.dit_from_name(P.sample_model, **P.dit).to(dev).eval().requires_grad_(False)
    fwd = torch.compile(net, backend=P.backend) if compiled else net
    cfg = soflow.preset("imagenet", num_classes=net.num_classes)
    x1 = torch.randn(P.sample_batch, net.in_channels, net.input_size, net.input_size, device=dev)
    y = torch.randint(0, net.num_classes, (P.sample_batch,), device=dev)

    @torch.no_grad()
    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            z = soflow.sample(fwd, cfg, x1, y)
        return [vae.decode(u.float() / checkpoints.LATENT_SCALE).sample for u in z.split(32)] if vae else z
    return step, None if vae else 2 * dit.flops(net.config) * P.sample_batch


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def goal(value, op, target, unit):
    """'goal >= 2x: met', or NOT met, or no verdict without a value."""
    verdict = "" if value is None else ": met" if (value >= target if op == ">=" else value <= target) else ": NOT met"
    return f"goal {op} {target:g}{unit}{verdict}"


def line(part, workload, config, cells, notes):
    print(f"| {part} | {workload} | {config} | {' | '.join(cells)} | {notes} |", flush=True)


def row(part, workload, config, r, note=""):
    """The row of a measurement r (None: skipped)."""
    if r is None or "error" in r:
        FAILED.extend([f"{part}: {workload}, {config}"] if r else [])
        return line(part, workload, config, ["-"] * 6,
                    f"FAILED: {r['error']}" if r else f"skipped: the part's {BUDGET[part]} s were spent")
    notes = [f"graphs {r['graphs']}, recompiled {r['recompiled']}" if r["graphs"] else "",
             "" if r["syncs"] is None else f"host syncs {r['syncs']} / step", note]
    line(part, workload, config, [f"{1e3 * r['sec']:.1f}", f"{r['img_s']:.1f}", fmt(r["rate"], ".3g"),
                                  fmt(r["mfu"] and 100 * r["mfu"], ".1f"), fmt(r["peak"] and r["peak"] / 2 ** 30, ".2f"),
                                  f"{r['first']:.1f}"], "; ".join(n for n in notes if n))


def ratio(part, workload, a, b, goals):
    """The speed-up of measurement a over b and the ratio of their peak memory, with goals(speed, memory)."""
    if a and b and "error" not in a and "error" not in b:
        speed, mem = b["sec"] / a["sec"], a["peak"] and b["peak"] and a["peak"] / b["peak"]
        line(part, workload, "-", ["-"] * 6, f"speed {speed:.2f}x{f', memory {mem:.2f}x' if mem else ''}{goals(speed, mem)}")

# ----------------------------------------------------------------------------- the parts


def part_train(dev, P, deadline):
    for name in P.dits:
        release, fast = (timed(dev, P, deadline, P.batch, lambda: dit_step(dev, P, name, precision, compiled))
                         for precision, compiled in (("fp32", False), ("bf16", True)))
        row("train", f"DiT-{name}, micro-batch {P.batch}", "release: fp32 (TF32), eager, fused attention", release)
        row("train", f"DiT-{name}, micro-batch {P.batch}", "bf16, compiled, fused attention", fast,
            goal(fast and fast.get("mfu") and 100 * fast["mfu"], ">=", 45, "% MFU") if name == "XL/2" else "")
        ratio("train", f"DiT-{name}: compiled bf16 against the release", fast, release,
              lambda s, m: "; " + goal(s, ">=", 2, "x") if name == "XL/2" else "")


def part_meanflow(dev, P, deadline):
    runs = {}
    for loss, attn in (("soflow", "math"), ("meanflow", "math"), ("soflow", "fused")):
        runs[loss, attn] = timed(dev, P, deadline, P.batch, lambda: dit_step(dev, P, P.mf_model, "bf16", False, attn, loss))
        row("meanflow", f"{'SoFlow' if loss == 'soflow' else 'MeanFlow'}, DiT-{P.mf_model}, micro-batch {P.batch}",
            f"bf16, eager, {attn} attention", runs[loss, attn])
    for attn in ("math", "fused"):
        ratio("meanflow", f"SoFlow ({attn} attention) against MeanFlow (math)", runs["soflow", attn],
              runs["meanflow", "math"], lambda s, m: (" (the authors' poster: 2.84 / 2.39 it/s = "
              "1.19x, 38.95 / 51.45 GB = 0.76x)" if attn == "math" else "") + f"; {goal(s, '>=', 1.3, 'x speed')}, "
              f"{goal(m, '<=', 0.7, 'x memory')}")


def part_sample(dev, P, deadline):
    what = f"DiT-{P.sample_model}, 1-NFE sampling, batch {P.sample_batch}"
    alone = timed(dev, P, deadline, P.sample_batch, lambda: sample_step(dev, P, False))
    row("sample", what, "bf16, eager", alone)
    r = timed(dev, P, deadline, P.sample_batch, lambda: sample_step(dev, P, False, vae=True), iters=3)
    both = "sec" in (alone or {}) and "sec" in (r or {})
    row("sample", what + ", then decoded", "bf16, eager; SD-VAE-sized decoder (random weights), fp32", r,
        f"the decoder alone: {P.sample_batch / (r['sec'] - alone['sec']):.1f} img/s" if both else "")
    r = timed(dev, P, deadline, P.sample_batch, lambda: sample_step(dev, P, True))
    row("sample", what, "bf16, compiled", r, goal(r and r.get("img_s"), ">=", 2000, " img/s") * (P.sample_model == "XL/2"))


def part_unet(dev, P, deadline):
    """train_cifar.py's step on CUDA (bf16, compiled), without the augmentation's resampling."""
    def unet_inputs(images):       # train_cifar.py's labels: each transform drawn w.p. augment_p = 0.12
        n, d = images.shape[0], images.device
        labels = torch.where(torch.rand(n, 6, device=d) < 0.12, torch.randn(n, 6, device=d), 0.0)
        return images.float() / 127.5 - 1, None, {"augment_labels": labels}

    def build():
        net, cfg = unet.UNet(**P.unet).to(dev), soflow.preset("cifar10")
        model = trainer.Objective(trainer.compile_network(net, P.backend), cfg, unet_inputs)
        images = torch.randint(0, 256, (P.unet_batch, 3, net.img_resolution, net.img_resolution), dtype=torch.uint8)
        step = train_step(net, model, [(images.to(dev),)], dev, "bf16", optimizer="radam", beta1=0.9, beta2=0.999)
        return step, trainer.step_flops(unet.flops(net.config), cfg, P.unet_batch, 1, 1)
    with torch._inductor.config.patch(fallback_random=True):      # as train_cifar.py compiles a U-Net with dropout
        r = timed(dev, P, deadline, P.unet_batch, build)
    row("unet", f"CIFAR-10 U-Net, micro-batch {P.unet_batch}", "bf16, compiled, fused attention", r)


def part_run(dev, P, deadline, folder):
    nproc = torch.cuda.device_count() if dev.type == "cuda" else 1
    batch, half, out, data, n = P.batch * nproc, P.steps // 2, f"{folder}/run", f"{folder}/latents", 4 * P.batch * nproc
    os.makedirs(data)                                 # latents in prepare_imagenet.py's format
    rng = np.random.default_rng(0)
    np.save(f"{data}/mean.npy", 5 * rng.standard_normal((n, *P.latent), np.float32))
    np.save(f"{data}/std.npy", np.full((n, *P.latent), 0.1, np.float32))
    np.save(f"{data}/labels.npy", rng.integers(0, P.classes, n))
    with open(f"{data}/meta.json", "w") as f:
        json.dump(dict(vae=checkpoints.DEFAULT_VAE, image_size=8 * P.latent[-1], latent_shape=list(P.latent),
                       num_items=n, num_classes=P.classes, complete=True), f)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_imagenet.py"), *P.run, f"--data={data}",
           f"--out_dir={out}", f"--batch_size={batch}", f"--steps={P.steps}", f"--device={dev.type}", "--progress=False",
           f"--log_every={P.log}", "--sample_every=0", f"--peak_tflops={P.peak or 0}"]
    problems, log = [], ""
    for extra in ([f"--stop_at={half}"], []):      # stopped half way, then resumed
        try:
            res = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=max(deadline - time.perf_counter(), 1))
        except subprocess.TimeoutExpired:
            problems.append(f"over the part's {BUDGET['run']} s")
            break
        log += res.stdout + res.stderr
        if res.returncode:
            problems.append(f"exit status {res.returncode}")
            break
    rows = list(csv.DictReader(open(f"{out}/log.csv"))) if os.path.isfile(f"{out}/log.csv") else []
    steps, ckpt = [int(r["step"]) for r in rows], f"{out}/ckpt.pt"
    problems += [] if problems else [what for what, ok in (
        (f"log.csv's steps {steps}", steps == [*range(P.log, P.steps + 1, P.log)]),
        ("a non-finite loss", all(math.isfinite(float(r["loss"])) for r in rows)),
        (f"no checkpoint of step {P.steps}", os.path.isfile(ckpt) and checkpoints.load(ckpt)["step"] == P.steps),
        (f"no resume at step {half}", f"resumed from {ckpt} at step {half}" in log)) if not ok]
    if problems:
        FAILED.append("run")
        print(log[-3000:], file=sys.stderr)
    clean = [r for r in rows if int(r["step"]) not in (P.log, half + P.log)]      # their time includes compilation
    median = lambda k: float(np.median([float(r[k]) for r in clean])) if clean and clean[0].get(k) else None
    line("run", f"torchrun train_imagenet.py {' '.join(P.run)}, batch {batch}, {P.steps} steps",
         f"the script's defaults on {dev.type}, {nproc} process(es)", ["-", fmt(median("img_per_s"), ".1f"), "-",
         fmt(median("mfu") and 100 * median("mfu"), ".1f"), fmt(median("peak_mem_gib"), ".2f"), "-"],
         "FAILED: " + ", ".join(problems) if problems else f"finite losses, checkpoint at {P.steps}, resumed at {half}: ok")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: p.exit(2, f"{p.prog}: error: {msg} (--help lists the options)\n")
    p.add_argument("--tiny", action="store_true", help="tiny versions of every part (on a CPU: a minute or two)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated (default: all of them)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA if there is one")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="dense bf16 TFLOP/s for MFU; 0 = from the device's name")
    args = p.parse_args(argv)
    if not set(parts := args.parts.split(",")) <= set(PARTS):
        p.error(f"argument --parts: {args.parts!r} is not a comma-separated list of {', '.join(PARTS)}")
    if not 0 <= args.peak_tflops < math.inf:
        p.error(f"argument --peak_tflops: {args.peak_tflops} is not a number >= 0")
    _, _, dev = trainer.setup(args.device)                       # TF32 for fp32 matmuls on a GPU, as the scripts
    if dev.type != "cuda" and not args.tiny:
        raise SystemExit("error: the report measures H100-scale steps and needs a CUDA GPU, and none is in use here "
                         "(none found, or --device cpu); --tiny runs its tiny version on the CPU")
    P = argparse.Namespace(**(TINY if args.tiny else FULL), backend="inductor" if dev.type == "cuda" else "eager",
                           peak=trainer.peak_tflops(dev, args.peak_tflops))
    where = f"{torch.cuda.get_device_name(dev)}, CUDA {torch.version.cuda}" if dev.type == "cuda" else "CPU"
    print(f"**python bench.py {' '.join(sys.argv[1:] if argv is None else argv)}** on {where}, torch {torch.__version__},"
          f" bf16 peak {fmt(P.peak, 'g')} TFLOP/s, {time.strftime('%Y-%m-%d')}{': tiny, it measures nothing' * args.tiny}\n")
    print("| part | workload | configuration | ms / step | img/s | TFLOP/s | MFU % | peak GiB | first step s | notes |\n"
          "|---|---|---|---|---|---|---|---|---|---|", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            globals()[f"part_{part}"](dev, P, time.perf_counter() + BUDGET[part], *([tmp] if part == "run" else []))
    print(f"\n{time.perf_counter() - t0:.0f} s in all (budget {sum(BUDGET[u] for u in parts)} s)", flush=True)
    if FAILED:
        raise SystemExit(f"error: {len(FAILED)} measurement(s) failed ({'; '.join(FAILED)}): their tracebacks are above")


if __name__ == "__main__":
    main()
