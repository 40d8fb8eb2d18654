"""
Benchmarks: step time and memory, one function per mode.

    python bench.py --mode=networks --model=B/2 --batch=32
    python bench.py --mode=networks --model=T/2,B/4 --batch=4 --settings=fp32,bf16+compile
    python bench.py --mode=losses --model=T/2 --batch=8 --threads=1

Every value below is a plain global that `--name=value` overrides on the command line
(values are parsed as Python literals when possible, else kept as strings). Timing is
sync-correct: warm-up iterations first (they include torch.compile's compilation, which
is reported separately), then each timed iteration measured on its own (CUDA events on a
GPU, read after one final torch.cuda.synchronize(); the wall clock on the CPU) and the
median reported, which resists interference from other processes. Peak memory comes from
torch.cuda.max_memory_allocated. On a CPU shared with other jobs, --threads=1 avoids the
thread oversubscription that can slow multi-threaded kernels down by an order of magnitude.

Modes
  networks  forward + backward of the bare network F(x, t, s, y) (dit.py, unet.py), per
            model, attention path ('fused' | 'math') and setting: 'fp32' (eager, full
            precision), 'bf16' (eager, bf16 autocast), 'bf16+compile' (bf16 autocast and
            torch.compile). Reports time per image, images/s, the arithmetic rate implied
            by the analytic FLOP count (DiT only: 2 operations per multiply-add, x3 for
            forward + backward) and, on a GPU with a known peak, MFU.
  train     one optimizer step of train_imagenet.py (DiT names) or train_cifar.py ('unet')
            at the paper's settings on synthetic data: the whole SoFlow loss of a
            micro-batch of `batch` images, backward, optimizer, EMA, with the scripts' own
            train_step. Reports ms / step, images/s, the arithmetic rate of the forwards
            the loss makes (train_imagenet.dit_step_flops; the U-Net's counted by torch's
            FLOP counter), MFU and peak memory. The paper's per-GPU batch on 8 GPUs:
                python bench.py --mode=train --model=B/2,XL/2 --batch=32 --attn=fused --settings=fp32,bf16+compile
                python bench.py --mode=train --model=unet --batch=128 --attn=fused --settings=fp32,bf16+compile
  losses    one training step (loss forward + backward + Adam step) of the SoFlow loss
            (soflow.soflow_loss, preset 'imagenet', guidance on) against the MeanFlow loss
            (baselines.meanflow_loss, MEANFLOW_IMAGENET, guidance on) on the same DiT, batch
            and setting ('fp32' | 'bf16'), per attention path; then their ratios next to the
            authors' (SPEC section 10), and 1-NFE sampling throughput (soflow.sample; the
            MeanFlow one-step sampler is the same single forward). MeanFlow's Jacobian-vector
            product (torch.func.jvp) needs forward-mode autodiff through attention: where
            the fused kernel lacks it, the row says so and the ratios use MeanFlow with math
            attention, as the authors' own comparison did. Peak memory: on a GPU,
            torch.cuda.max_memory_allocated (everything allocated, weights included); on the
            CPU, each measurement runs in a fresh process (--isolate=True) and reports the
            growth of that process's peak resident set size (ru_maxrss) over the step loop,
            i.e. activations, gradients and optimizer state, weights excluded.
"""

import ast
import dataclasses
import sys
import time

import torch

# -----------------------------------------------------------------------------
# configuration (override with --name=value)
mode = "networks"
model = "B/4"                           # comma-separated: DiT names (dit.DIT_CONFIGS) or 'unet'
batch = 8                               # images per forward+backward
attn = "fused,math"                     # attention paths to compare
settings = "fp32,bf16,bf16+compile"     # see the docstring
warmup = 2                              # untimed iterations (the first one compiles)
iters = 5                               # timed iterations
device = "cuda" if torch.cuda.is_available() else "cpu"
tf32 = True                             # TF32 matmuls for the fp32 setting on NVIDIA GPUs
peak_tflops = 0.0                       # the device's dense bf16 peak for MFU; 0 = guess from its name
threads = 0                             # CPU threads for torch (0 = torch's default)
seed = 0
losses = "soflow,meanflow"              # losses mode: the losses to time
loss_settings = "fp32,bf16"             # losses mode: 'fp32' and/or 'bf16' (autocast)
isolate = True                          # losses mode: one fresh process per measurement (CPU memory)
# -----------------------------------------------------------------------------


def apply_overrides(argv):
    """nanoGPT-style: --name=value sets the global `name`, which must exist."""
    g = globals()
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"bad argument {arg!r}: use --name=value")
        key, val = arg[2:].split("=", 1)
        if key not in g or key.startswith("_") or callable(g[key]):
            raise SystemExit(f"unknown setting {key!r}")
        try:
            val = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            pass                                  # a plain string such as B/2 or cuda:1
        if type(g[key]) is float and type(val) is int:
            val = float(val)
        if type(val) is not type(g[key]):
            raise SystemExit(f"--{key}: expected a {type(g[key]).__name__}, got {val!r}")
        g[key] = val


def _split(s):
    return [u.strip() for u in str(s).split(",") if u.strip()]


def _sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _guess_peak_tflops():
    """Dense bf16 tensor-core peaks (vendor figures) of common GPUs; None if unknown."""
    if peak_tflops > 0:
        return peak_tflops
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    for key, value in (("H200", 989.4), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1), ("4090", 165.2)):
        if key in name:
            return value
    return None


def time_step(step):
    """Median seconds per call of step() over `iters` calls after `warmup` untimed calls
    (at least one); also the first call's time, which includes any compilation."""
    _sync()
    t0 = time.perf_counter()
    step()
    _sync()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    _sync()
    if device.startswith("cuda"):   # events queue with the work: no host sync between iterations
        events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
        events[0].record()
        for i in range(iters):
            step()
            events[i + 1].record()
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])]
    else:
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], first

# -----------------------------------------------------------------------------
# mode: networks

def build_network(name, attn_mode):
    """The network and a function making a batch of its inputs (on `device`)."""
    import dit
    import unet
    g = torch.Generator().manual_seed(seed)
    if name == "unet":
        net = unet.UNet(attn=attn_mode)
        shape, labels = (3, 32, 32), None
    else:
        net = dit.dit_from_name(name, attn=attn_mode)
        shape, labels = (4, net.input_size, net.input_size), net.num_classes
    x = torch.randn(batch, *shape, generator=g)
    t = torch.rand(batch, generator=g)
    s = t * torch.rand(batch, generator=g)
    y = None if labels is None else torch.randint(0, labels, (batch,), generator=g)
    args = [u.to(device) if u is not None else None for u in (x, t, s, y)]
    return net.to(device), args


def _setup():
    """Seed, CPU threads and TF32 as configured; returns (peak TFLOP/s, where it runs)."""
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    return _guess_peak_tflops(), where


def bench_networks():
    import dit
    peak, where = _setup()
    print(f"# networks: forward+backward of F, batch {batch}, median of {iters} iterations after {warmup} warm-up, "
          f"{where}, torch {torch.__version__}")
    print("| model | params | attention | setting | ms / image | images / s | first call (s) "
          "| TFLOP/s | MFU | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in _split(model):
        for attn_mode in _split(attn):
            for setting in _split(settings):
                if setting not in ("fp32", "bf16", "bf16+compile"):
                    raise SystemExit(f"unknown setting {setting!r}: use fp32, bf16 or bf16+compile")
                net, (x, t, s, y) = build_network(name, attn_mode)
                params = sum(p.numel() for p in net.parameters())
                fn = torch.compile(net) if setting.endswith("compile") else net
                dtype = torch.bfloat16 if setting.startswith("bf16") else torch.float32
                dev_type = device.split(":")[0]

                def step():
                    with torch.autocast(dev_type, dtype=dtype, enabled=dtype != torch.float32):
                        out = fn(x, t, s, y)
                    out.float().square().mean().backward()
                    net.zero_grad(set_to_none=True)

                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                sec, first = time_step(step)
                per_image = sec / batch
                # the analytic count is per forward, in multiply-adds: x2 operations, x3 fwd + bwd
                rate = 6 * dit.flops(net) / per_image / 1e12 if name != "unet" else None
                mfu = f"{100 * rate / peak:.1f}%" if rate is not None and peak else "-"
                mem = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else "-"
                print(f"| {name} | {params / 1e6:.2f}M | {attn_mode} | {setting} | {1e3 * per_image:.2f} "
                      f"| {1 / per_image:.1f} | {first:.1f} | {'-' if rate is None else f'{rate:.3f}'} "
                      f"| {mfu} | {mem} |", flush=True)
                del net, fn
                torch._dynamo.reset()

# -----------------------------------------------------------------------------
# mode: losses

AUTHORS = {"speed": 2.84 / 2.39, "memory": 38.95 / 51.45}   # SoFlow / MeanFlow, math attention (SPEC 10)


def _loss_fn(name, net, num_classes):
    """loss(x0, y) -> scalar, for 'soflow' or 'meanflow', with guidance as trained on ImageNet."""
    import baselines
    import soflow
    if name == "soflow":
        cfg = soflow.preset("imagenet", num_classes=num_classes)
        return lambda x0, y: soflow.soflow_loss(net, cfg, x0, y, step=1000)[0]
    if name == "meanflow":
        cfg = dataclasses.replace(baselines.MEANFLOW_IMAGENET, num_classes=num_classes)
        return lambda x0, y: baselines.meanflow_loss(net, cfg, x0, y)[0]
    raise SystemExit(f"unknown loss {name!r}: use soflow or meanflow")


def measure_loss_step(conf):
    """Time one training step of conf['loss'] on a DiT; peak memory as in the docstring.
    Returns a dict with seconds, first (s), peak (bytes or None), error (str or None)."""
    import resource
    import dit
    globals().update(conf["globals"])
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    net = dit.dit_from_name(conf["model"], attn=conf["attn"]).to(device)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, net.in_channels, net.input_size, net.input_size, generator=g).to(device)
    y = torch.randint(0, net.num_classes, (batch,), generator=g).to(device)
    loss_fn = _loss_fn(conf["loss"], net, net.num_classes)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.99))
    dtype = torch.bfloat16 if conf["setting"] == "bf16" else torch.float32
    dev_type = device.split(":")[0]

    def step():
        with torch.autocast(dev_type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn(x0, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB
    try:
        sec, first = time_step(step)
    except (NotImplementedError, RuntimeError) as e:     # no forward-mode derivative for a kernel
        if isinstance(e, RuntimeError) and "forward" not in str(e).lower():
            raise
        return {"seconds": None, "first": None, "peak": None, "error": str(e).splitlines()[0]}
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0 if conf["isolated"] else None
    return {"seconds": sec, "first": first, "peak": peak, "error": None}


def measure_sampling(model_name, attn_mode, setting):
    """Images/s of 1-NFE sampling, x0 = f(x1, 1, 0) (soflow.sample)."""
    import dit
    import soflow
    net = dit.dit_from_name(model_name, attn=attn_mode).to(device).eval()
    cfg = soflow.preset("imagenet", num_classes=net.num_classes)
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, net.in_channels, net.input_size, net.input_size, generator=g).to(device)
    y = torch.randint(0, net.num_classes, (batch,), generator=g).to(device)
    dtype = torch.bfloat16 if setting == "bf16" else torch.float32

    def step():
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            soflow.sample(net, cfg, x1, y)
    return batch / time_step(step)[0]


def _run(conf):
    """measure_loss_step in a fresh process (CPU memory figures) or here."""
    if not conf["isolated"]:
        return measure_loss_step(conf)
    import multiprocessing as mp
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_loss_step, (conf,))


def bench_losses():
    if threads > 0:
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    on_gpu = device.startswith("cuda")
    where = torch.cuda.get_device_name() if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    mem_kind = "torch.cuda.max_memory_allocated" if on_gpu else (
        "growth of the process's peak RSS over the step loop, fresh process per row" if isolate else "not measured (--isolate=False)")
    print(f"# losses: one training step (loss forward + backward + Adam), batch {batch}, median of {iters} "
          f"after {warmup} warm-up, {where}, torch {torch.__version__}; peak memory: {mem_kind}")
    print("| model | attention | setting | loss | ms / step | steps / s | first step (s) | peak memory | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    shared = {k: globals()[k] for k in ("device", "batch", "warmup", "iters", "threads", "seed", "tf32")}
    results = {}
    for name in _split(model):
        import dit
        n = sum(p.numel() for p in dit.dit_from_name(name).parameters() if p.requires_grad)
        print(f"# {name}: {n / 1e6:.2f}M trainable parameters, whatever the loss: fp32 gradients + Adam state "
              f"{12 * n / 2**30:.3f} GiB (in both memory figures), weights {4 * n / 2**30:.3f} GiB (in the GPU figure only)")
        for setting in _split(loss_settings):
            if setting not in ("fp32", "bf16"):
                raise SystemExit(f"unknown loss setting {setting!r}: use fp32 or bf16")
            for attn_mode in _split(attn):
                for loss in _split(losses):
                    conf = {"model": name, "attn": attn_mode, "setting": setting, "loss": loss,
                            "globals": shared, "isolated": isolate and not on_gpu}
                    r = _run(conf)
                    results[name, setting, attn_mode, loss] = r
                    if r["error"]:
                        print(f"| {name} | {attn_mode} | {setting} | {loss} | - | - | - | - | torch.func.jvp "
                              f"unsupported here ({r['error'][:70]}...); the ratios use math attention |", flush=True)
                        continue
                    mem = "-" if r["peak"] is None else f"{r['peak'] / 2**30:.3f} GiB"
                    print(f"| {name} | {attn_mode} | {setting} | {loss} | {1e3 * r['seconds']:.1f} "
                          f"| {1 / r['seconds']:.2f} | {r['first']:.1f} | {mem} | |", flush=True)
    if "soflow" in _split(losses) and "meanflow" in _split(losses):
        print(f"\n# SoFlow / MeanFlow (authors, GPU, math attention: speed {AUTHORS['speed']:.2f}x, "
              f"memory {AUTHORS['memory']:.2f}x)")
        print("| model | setting | SoFlow attention | MeanFlow attention | speed (steps/s ratio) | memory ratio |")
        print("|---|---|---|---|---|---|")
        for name in _split(model):
            for setting in _split(loss_settings):
                for attn_mode in _split(attn):
                    so = results.get((name, setting, attn_mode, "soflow"))
                    mf_attn = attn_mode
                    mf = results.get((name, setting, attn_mode, "meanflow"))
                    if mf is not None and mf["error"] and (name, setting, "math", "meanflow") in results:
                        mf_attn, mf = "math", results[name, setting, "math", "meanflow"]   # the fallback
                    if not so or not mf or so["error"] or mf["error"]:
                        continue
                    mem = f"{so['peak'] / mf['peak']:.2f}x" if so["peak"] and mf["peak"] else "-"
                    print(f"| {name} | {setting} | {attn_mode} | {mf_attn} | {mf['seconds'] / so['seconds']:.2f}x "
                          f"| {mem} |", flush=True)
    print("\n# 1-NFE sampling (one forward of F; the same for both methods)")
    print("| model | attention | setting | images / s |")
    print("|---|---|---|---|")
    for name in _split(model):
        for setting in _split(loss_settings):
            for attn_mode in _split(attn):
                print(f"| {name} | {attn_mode} | {setting} | {measure_sampling(name, attn_mode, setting):.1f} |", flush=True)

# -----------------------------------------------------------------------------
# mode: train

def build_training(name, attn_mode, compiled):
    """What train_imagenet.py (DiT names) or train_cifar.py ('unet') trains, at the
    paper's settings: the network, the loss module, one micro-batch of synthetic data
    (`batch` images), the optimizer settings, the EMA and the operations of one step."""
    import argparse
    import soflow
    import trainer
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    if name == "unet":
        import unet
        net = unet.UNet(attn=attn_mode).to(dev)
        cfg = soflow.preset("cifar10")
        fwd = torch.compile(net, dynamic=False) if compiled else net
        if compiled:
            torch._inductor.config.fallback_random = True       # as train_cifar.py: dropout masks replay
        objective = trainer.Objective(fwd, cfg, lambda x: (x.float() / 127.5 - 1, None, {
            "augment_labels": torch.zeros(x.shape[0], 6, device=x.device)}))
        data = (torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g).to(dev),)
        opt = dict(optimizer="radam", lr=1e-4, beta1=0.9, beta2=0.999, weight_decay=0.0)
        ema = trainer.EMA(net, 0.9999, 16, "float64")
        macs = unet.flops(net.config)
    else:
        import dit
        net = dit.dit_from_name(name, attn=attn_mode).to(dev)
        cfg = soflow.preset("imagenet")
        fwd = torch.compile(net, dynamic=False) if compiled else net
        objective = trainer.Objective(fwd, cfg, lambda mean, std, y: ((mean + std * torch.randn_like(std)) * 0.18215, y, None))
        mean = torch.randn(batch, 4, 32, 32, generator=g) * 5
        std = torch.rand(batch, 4, 32, 32, generator=g) * 0.1
        data = tuple(u.to(dev) for u in (mean, std, torch.randint(0, 1000, (batch,), generator=g)))
        opt = dict(optimizer="adam", lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0)
        ema = trainer.EMA(net, 0.9999, 1, "float32")
        macs = dit.flops(net.config)
    C = argparse.Namespace(**opt, grad_clip=0.0, seed=seed)
    return net, objective, data, C, ema, trainer.step_flops(macs, cfg, batch, 1, 1)


def bench_train():
    """One optimizer step of the training scripts (trainer.train_step: the whole SoFlow
    loss of a micro-batch, backward, gradient norm, optimizer step, EMA update), one
    process, synthetic data, per setting: 'fp32' (eager, TF32 on a GPU as the scripts set
    it), 'bf16' (eager, autocast), 'bf16+compile' (autocast, torch.compile of the network:
    the scripts' default on CUDA)."""
    import trainer
    peak, where = _setup()
    print(f"# train: one optimizer step (SoFlow loss, backward, optimizer, EMA), micro-batch {batch}, median of "
          f"{iters} steps after {warmup} warm-up, {where}, torch {torch.__version__}")
    print("| model | params | attention | setting | ms / step | images / s | first step (s) | TFLOP/s | MFU "
          "| peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    dev = torch.device(device)
    for name in _split(model):
        for attn_mode in _split(attn):
            for setting in _split(settings):
                if setting not in ("fp32", "bf16", "bf16+compile"):
                    raise SystemExit(f"unknown setting {setting!r}: use fp32, bf16 or bf16+compile")
                net, objective, data, C, ema, flops = build_training(name, attn_mode, setting.endswith("compile"))
                opt = trainer.make_optimizer(C, net, dev)
                autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=setting.startswith("bf16"))
                count = [0]

                def step():
                    trainer.train_step(objective, opt, ema, net, [data], count[0], C, 0, 1, dev, autocast)
                    count[0] += 1

                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                sec, first = time_step(step)
                rate = flops / sec / 1e12
                mfu = f"{100 * rate / peak:.1f}%" if peak else "-"
                mem = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else "-"
                params_m = sum(p.numel() for p in net.parameters()) / 1e6
                print(f"| {name} | {params_m:.2f}M | {attn_mode} | {setting} | {1e3 * sec:.1f} | {batch / sec:.1f} "
                      f"| {first:.1f} | {rate:.3f} | {mfu} | {mem} |", flush=True)
                del net, objective, opt, ema
                torch._dynamo.reset()

# -----------------------------------------------------------------------------

MODES = {"networks": bench_networks, "losses": bench_losses, "train": bench_train}


def main(argv):
    apply_overrides(argv)
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}: choose from {sorted(MODES)}")
    MODES[mode]()


if __name__ == "__main__":
    main(sys.argv[1:])
