"""
What the two training scripts (train_imagenet.py, train_cifar.py) share once settings.py has
read their settings, in the order a run uses it: processes and seeds, the order of the data,
the optimizer and EMA, the training step, and the run's folder (checkpoints with an exact
resume, the log). Each script keeps its own loop; the loops call this.

Every random draw of a micro-step comes from (seed, step, index of the micro-batch in the
step) alone, and the images of a step from (seed, step): a resumed run continues bit for
bit (on the CPU), and 8 processes or 2 with accumulation see the same data and noise.
"""

import contextlib
import copy
import csv
import functools
import os
import shutil
import time

import numpy as np
import torch
import torch.distributed as dist

import checkpoints
import soflow

# -----------------------------------------------------------------------------
# Processes, devices, seeds, the order of the data.

def world():
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) under plain python."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def setup(device):
    """Join the torchrun group if there is one (NCCL on GPUs, gloo on the CPU); TF32 for
    whatever runs in fp32 on a GPU. Returns (rank, world size, device)."""
    rank, world_size, local = world()
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device=cuda: CUDA is not available here; use --device=cpu")
    dev = torch.device(f"cuda:{local}" if device != "cpu" and torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return rank, world_size, dev


def seed_micro_step(seed, step, index, device):
    """Seed the CPU and this process's GPU for micro-batch `index` of `step`. The CPU's
    Mersenne Twister keeps only the low 32 bits of a seed (so (seed, step, index) packed
    into bits would repeat the noise every 65,536 steps and ignore the seed): it gets a
    32-bit hash of the three; the GPU's Philox takes them packed into 64 bits."""
    torch.random.default_generator.manual_seed(int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0]))
    if device.type == "cuda":
        torch.cuda.manual_seed((seed << 40) | (step << 16) | index)    # seed < 2**20, step < 2**24, index < 2**16


@functools.lru_cache(maxsize=2)
def _epoch_order(num_items, seed, epoch):
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def step_indices(num_items, batch, seed, step):
    """The dataset indices of the global batch of `step`: a fresh permutation each epoch,
    seeded by (seed, epoch), cut into batches (an incomplete last batch is skipped)."""
    epoch, pos = divmod(step, num_items // batch)
    return _epoch_order(num_items, seed, epoch)[pos * batch:(pos + 1) * batch]


def micro_slices(batch, micro, rank, world_size):
    """(index j, slice of the global batch) of each micro-step of this process: micro-step
    a of rank r takes part j = a * world + r, whatever the split."""
    return [(j, slice(j * micro, (j + 1) * micro)) for j in range(rank, batch // micro, world_size)]

# -----------------------------------------------------------------------------
# Optimizer, EMA, the step.

def make_optimizer(C, net, device):
    """The optimizer over the trainable parameters (the DiT's frozen position embedding is a
    parameter without gradient); fused Adam on GPUs."""
    params = [p for p in net.parameters() if p.requires_grad]
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[C.optimizer]
    kw = {"fused": True} if device.type == "cuda" and C.optimizer != "radam" else {}
    return cls(params, lr=C.lr, betas=(C.beta1, C.beta2), weight_decay=C.weight_decay, **kw)


class EMA:
    """An exponential moving average of the weights in its own copy of the network, updated
    every `every` steps with decay ** every (so that a sparse float64 average, as the
    authors' CIFAR-10 recipe keeps, decays at the same rate per step)."""

    def __init__(self, net, decay, every=1, dtype="float32"):
        self.net = copy.deepcopy(net).to(getattr(torch, dtype)).eval().requires_grad_(False)
        self.decay, self.every = decay ** every, every

    @torch.no_grad()
    def update(self, net, step):
        if step % self.every == 0:
            dst = list(self.net.parameters())
            torch._foreach_lerp_(dst, [p.detach().to(d.dtype) for p, d in zip(net.parameters(), dst)], 1 - self.decay)


def train_step(model, opt, ema, net, micro_batches, step, C, rank, world_size, device, autocast):
    """One optimizer step: forward and backward of each micro-batch (the gradients are
    all-reduced by DDP on the last one only), the gradient norm (clipped if asked), the
    update, the EMA. model(step, *micro_batch) -> (loss, logs). Returns the step's figures
    as device tensors, with 'ok' (all finite): nothing here waits for the device."""
    logs, ok = {}, torch.ones((), dtype=torch.bool, device=device)
    params = opt.param_groups[0]["params"]
    for a, mb in enumerate(micro_batches):
        seed_micro_step(C.seed, step, a * world_size + rank, device)
        with (model.no_sync() if world_size > 1 and a < len(micro_batches) - 1 else contextlib.nullcontext()):
            with autocast:
                loss, figures = model(step, *mb)
            (loss / len(micro_batches)).backward()
        logs.update({k: logs.get(k, 0) + v.float() / len(micro_batches) for k, v in figures.items()})
        ok &= torch.isfinite(loss.detach())
    if C.grad_clip > 0:
        logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, C.grad_clip)    # foreach kernels where they exist
    else:
        logs["grad_norm"] = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    logs["ok"] = ok & torch.isfinite(logs["grad_norm"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.update(net, step + 1)
    return logs


class Objective(torch.nn.Module):
    """The loss of one micro-batch as one module call, so that DistributedDataParallel (which
    wraps this module) sees one forward per micro-step although soflow_loss calls the network
    several times. inputs(*micro_batch) -> (x0, labels or None, extra network inputs or None)."""

    def __init__(self, net, cfg, inputs):
        super().__init__()
        self.net, self.cfg, self.inputs = net, cfg, inputs

    def forward(self, step, *micro_batch):
        x0, y, extra = self.inputs(*micro_batch)
        return soflow.soflow_loss(self.net, self.cfg, x0, y, step=step, net_kwargs=extra)


def compile_network(net, backend="inductor"):
    """torch.compile with static shapes: soflow_loss calls the network at fixed sizes (guided ImageNet at 32:
    40 images gradient-free, 24 with gradient, 8 with, 8 without), each call gets its own graph in the first
    step and none is compiled later; torch's default recompiles the second call with symbolic sizes."""
    return torch.compile(net, dynamic=False, backend=backend)


PEAK_TFLOPS = (("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("B200", 2250),
               ("A100", 312), ("L40S", 362), ("RTX 4090", 165))   # dense bf16, vendor datasheets


def peak_tflops(device, given=0.0):
    """The device's dense bf16 peak for MFU: `given`, else from its name; None if unknown."""
    if given or device.type != "cuda":
        return given or None
    return next((v for k, v in PEAK_TFLOPS if k in torch.cuda.get_device_name(device)), None)


def step_flops(macs_per_image, cfg, micro, accum, world_size):
    """Arithmetic operations of one optimizer step, for MFU: 2 per multiply-add, 3 forwards'
    worth (forward + backward) for each image the network sees with gradient, one for each
    gradient-free pass of the loss (soflow.forward_passes)."""
    with_grad, no_grad = soflow.forward_passes(cfg, micro)
    return 2 * macs_per_image * (3 * with_grad + no_grad) * accum * world_size

# -----------------------------------------------------------------------------
# The run's folder: ckpt.pt (the latest, written atomically), ckpt_STEP.pt (every
# keep_every steps), log.csv (append-only, trimmed exactly on resume), loss.png.

LOG_FIELDS = ["step", "epoch", "loss", "fm_mse", "fm_weight", "scm_mse", "scm_weight", "grad_norm", "r", "lr",
              "img_per_s", "mfu", "peak_mem_gib", "time_s"]
# what may change when a run resumes: where things are, how often, how fast, the stopping step
RESUMABLE = {"out_dir", "data", "data_dir", "download", "micro_batch", "compile", "device", "log_every",
             "ckpt_every", "keep_every", "sample_every", "num_samples", "vae", "stop_at", "peak_tflops",
             "progress", "preset", "num_workers"}


def _write_rows(f, rows, header):
    w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
    if header:
        w.writeheader()
    w.writerows(rows)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: list(v) if isinstance(v, tuple) else v})
    return out


class Run:
    """The run's folder and its bookkeeping. Made before any compute: it checks the folder."""

    def __init__(self, C, rank, world_size):
        self.C, self.rank, self.world = C, rank, world_size
        self.ckpt, self.log_path = os.path.join(C.out_dir, "ckpt.pt"), os.path.join(C.out_dir, "log.csv")
        if os.path.exists(C.out_dir) and not os.path.isdir(C.out_dir):
            raise SystemExit(f"error: --out_dir={C.out_dir!r} is a file, not a folder; name another --out_dir")
        self.sums, self.count, self.t_mark, self.t_start = {}, 0, time.perf_counter(), time.perf_counter()

    def resume(self, config, net, ema, opt):
        """Load ckpt.pt if there is one (the configuration must match) and return its step, or 0.
        The log loses the rows after that step, and a kept checkpoint that a kill prevented is made."""
        self.device = next(net.parameters()).device
        self.first_bad = torch.tensor(2 ** 62, device=self.device)     # the first step with a non-finite figure
        if self.rank == 0:
            os.makedirs(self.C.out_dir, exist_ok=True)
            for f in os.listdir(self.C.out_dir):         # leftovers of a write that was killed
                if f.endswith(".tmp"):
                    os.unlink(os.path.join(self.C.out_dir, f))
        step = 0
        if os.path.isfile(self.ckpt):
            try:
                ck = checkpoints.load(self.ckpt)
            except ValueError as e:
                raise SystemExit(f"error: {e}. Delete it to start again, or name another --out_dir") from None
            a, b = _flat(ck["config"]), _flat(config)
            diff = [f"{k}: checkpoint {a.get(k, '(absent)')!r}, now {b.get(k, '(absent)')!r}" for k in sorted(set(a) | set(b))
                    if k.split(".")[-1] not in RESUMABLE | {"attn"} and a.get(k, "(absent)") != b.get(k, "(absent)")]
            if diff:
                raise SystemExit(f"error: {self.ckpt} was written by a run with another configuration; use another "
                                 f"--out_dir, or the checkpoint's values:\n  " + "\n  ".join(diff))
            net.load_state_dict(ck["model"])
            ema.net.load_state_dict(ck["ema"])
            opt.load_state_dict(ck["optimizer"])
            step = ck["step"]
        if self.rank == 0:
            self.trim_log(step)
            if step and self.C.keep_every and step % self.C.keep_every == 0:
                self.keep(step)                           # again: a kill may have come before the link
            if step:
                print(f"resumed from {self.ckpt} at step {step}", flush=True)
        self.barrier()
        return step

    def trim_log(self, step):
        """log.csv without the rows after `step` (those of an interrupted run), atomically."""
        if os.path.isfile(self.log_path):
            with open(self.log_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
            checkpoints.atomic_write(self.log_path, lambda f: _write_rows(f, rows, header=True), text=True)

    def add(self, logs, step):
        """Accumulate a step's figures on the device (no host sync)."""
        self.first_bad = torch.where(logs["ok"], self.first_bad, self.first_bad.clamp(max=step))
        self.sums.update({k: self.sums.get(k, 0) + v for k, v in logs.items() if k != "ok"})
        self.count += 1

    def check_finite(self):
        """One host sync: stop if any step so far had a non-finite loss or gradient."""
        bad = self.first_bad.clone()
        if self.world > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        if bad.item() < 2 ** 62:
            raise SystemExit(f"error: non-finite loss or gradient at step {bad.item()}: training stopped; nothing "
                             f"was saved after it, {self.ckpt} holds the last good state"
                             + ("" if os.path.isfile(self.ckpt) else " (none was written)")
                             + ". Lower --lr, set --grad_clip, or check the data.")

    def log(self, step, flops=None, peak=None, **extra):
        """Average the figures since the last row over the steps and processes, append the row."""
        self.check_finite()
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k].float() for k in keys]) / self.count
        if self.world > 1:
            dist.all_reduce(vec)
            vec /= self.world
        seconds = time.perf_counter() - self.t_mark
        row = {"step": step, **{k: f"{v:.6g}" for k, v in zip(keys, vec.tolist())}, **extra,
               "img_per_s": f"{self.C.batch_size * self.count / seconds:.2f}",
               "time_s": f"{time.perf_counter() - self.t_start:.1f}"}
        if flops and peak:
            row["mfu"] = f"{flops * self.count / seconds / (self.world * peak * 1e12):.4f}"
        if self.device.type == "cuda":
            row["peak_mem_gib"] = f"{torch.cuda.max_memory_allocated(self.device) / 2 ** 30:.2f}"
        if self.rank == 0:                                # append-only: a kill loses at most this row
            new = not os.path.isfile(self.log_path)
            with open(self.log_path, "a", newline="") as f:
                _write_rows(f, [row], header=new)
        self.sums, self.count, self.t_mark = {}, 0, time.perf_counter()
        return row

    def save(self, step, config, net, ema, opt):
        """ckpt.pt, atomically, and ckpt_STEP.pt on keep_every steps (the same file, linked)."""
        self.check_finite()
        with self.paused():
            if self.rank == 0:
                checkpoints.save({"model": net.state_dict(), "ema": ema.net.state_dict(),
                                  "optimizer": opt.state_dict(), "step": step, "config": config}, self.ckpt)
                if self.C.keep_every and step % self.C.keep_every == 0:
                    self.keep(step)
            self.barrier()

    def keep(self, step):
        """ckpt_STEP.pt: a second name for ckpt.pt (a hard link, no copy), made atomically."""
        tmp = os.path.join(self.C.out_dir, f"ckpt_{step:07d}.pt.tmp")
        try:
            os.link(self.ckpt, tmp)
        except OSError:                                   # a file system without hard links
            shutil.copyfile(self.ckpt, tmp)
        os.replace(tmp, tmp[:-4])

    @contextlib.contextmanager
    def paused(self):
        """Time inside (saves, sample grids, plots) is not training time."""
        t0 = time.perf_counter()
        yield
        self.t_mark += time.perf_counter() - t0

    def barrier(self):
        if dist.is_initialized():
            dist.barrier()


def init_weights(net, ema, source):
    """Fine-tuning: the network and EMA weights of `source` (our checkpoint, a released file,
    folder or configuration name: checkpoints.resolve), loaded strictly; the run itself starts
    at step 0 with a new optimizer, `source` recorded in its config (train.init_from)."""
    try:
        path = checkpoints.resolve(source)
        ck = checkpoints.load(path)
        checkpoints.load_state(net, checkpoints.weights_of(ck, path, "model"), f"--init_from={source} ['model']")
        checkpoints.load_state(ema.net, checkpoints.weights_of(ck, path, "ema"), f"--init_from={source} ['ema']")
    except (ValueError, FileNotFoundError) as e:
        hint = ("; a model trained without label dropout has no null-label row: add --null_label False"
                if "embedding_table" in str(e) and getattr(net, "null_label", False) else "")
        raise SystemExit(f"error: {e}{hint}") from None
    if world()[0] == 0:
        print(f"fine-tuning from {path}: its network and EMA weights, a new optimizer, step 0", flush=True)


def finish(net, step, run):
    """The end of a run: with several processes, the replicas must hold the same weights."""
    if run.world > 1:
        mine = torch.stack([p.detach().double().sum() for p in net.parameters()]).sum()
        every = [torch.zeros_like(mine) for _ in range(run.world)]
        dist.all_gather(every, mine)
        every = [c.item() for c in every]
        print(f"[rank {run.rank}] parameter checksum {every[run.rank]!r}", flush=True)
        dist.destroy_process_group()
        if len(set(every)) != 1:
            raise RuntimeError(f"the processes' weights differ: checksums {every}")
    if run.rank == 0:
        print(f"done: step {step}, checkpoint {run.ckpt}", flush=True)
    return step


def plot_log(csv_path, png_path):
    """The curves of the CSV log as a PNG: the loss, the two MSEs, the gradient norm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader(open(csv_path, newline="")))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, keys, title in ((axes[0], ["loss"], "loss: lambda L_FM + (1 - lambda) L_SCM"),
                            (axes[1], ["fm_mse", "scm_mse"], "MSE of flow matching and consistency"),
                            (axes[2], ["grad_norm"], "gradient norm")):
        for k in (k for k in keys if any(r.get(k) for r in rows)):
            ax.plot(*zip(*[(int(r["step"]), float(r[k])) for r in rows if r.get(k)]), label=k)
        ax.set(title=title, xlabel="step", yscale="linear" if keys == ["loss"] else "log")
        ax.legend()
    fig.tight_layout()
    checkpoints.atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
