"""
Benchmarks: step time and memory, one function per mode.

    python bench.py --mode=networks --model=B/2 --batch=32
    python bench.py --mode=networks --model=T/2,B/4 --batch=4 --settings=fp32,bf16+compile

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
"""

import ast
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


def bench_networks():
    import dit
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    peak = _guess_peak_tflops()
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
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

MODES = {"networks": bench_networks}


def main(argv):
    apply_overrides(argv)
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}: choose from {sorted(MODES)}")
    MODES[mode]()


if __name__ == "__main__":
    main(sys.argv[1:])
