"""
Train SoFlow on ImageNet 256x256, class-conditional, in the latent space of the
SD-VAE, with a DiT (the paper's Sec. 5 and Appendix A; SPEC sections 7 and 8).

    # once: encode the training images into SD-VAE latents (posterior mean and std)
    torchrun --nproc_per_node=8 prepare_imagenet.py --data_dir=/data/imagenet/train
    # the paper's DiT-XL/2 on one node of 8 GPUs (32 images per GPU, 256 per step)
    torchrun --nproc_per_node=8 train_imagenet.py --preset=XL/2
    # the same run on 2 GPUs: 32 per GPU and 4 accumulation micro-steps per step
    torchrun --nproc_per_node=2 train_imagenet.py --preset=XL/2 --micro_batch=32
    python train_imagenet.py --list_presets       # the named settings and their values
    python train_imagenet.py --help               # every setting and its default

Configuration is the plain values below. Each one is overridden by --name=value
(parsed as a Python literal, else kept as a string). --preset=NAME applies a named
setting first, wherever it stands on the command line; explicit values win over it.
Besides these values, any argument of dit.DiT (--depth=2, --attn=math) and any field
of soflow.SoFlowConfig (--guidance_scale=2.0, --r_end=0.002) may be given: they override the
model's and the method's values. The data fix input_size, in_channels and
num_classes; `steps` is also K of the r(k, K) schedule (Eq. 16).

One optimizer step consumes `batch_size` images: `micro_batch` on each of the
world_size processes, accumulated over batch_size / (micro_batch x world_size)
micro-steps. The images of a step and every random draw of a micro-step (noise,
times, label dropout, the latent sample) are fixed by (seed, step, index of the
micro-batch in the step), not by the number of processes: a resumed run continues
the interrupted one exactly (bit for bit on the CPU), and 8 GPUs or 2 GPUs with
accumulation train on the same stream of data and noise.

Outputs in out_dir: ckpt.pt (the latest checkpoint, written atomically; starting
again with the same out_dir resumes from it), ckpt_STEP.pt (every keep_every
steps), log.csv, loss.png, samples_STEP.png (EMA model, fixed noise and labels).

This file also holds the training machinery that train_cifar.py uses (config
parsing, distributed setup, EMA, checkpoints, logs, the loop): the CIFAR-10 script
imports it and adds only its data, augmentation and network.
"""

import ast
import copy
import csv
import functools
import inspect
import json
import math
import os
import queue
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import dit
import soflow

# -----------------------------------------------------------------------------
# configuration (override with --name=value; see the docstring)
preset = ""                        # a named setting (PRESETS below), applied before the other values
model = "B/4"                      # DiT configuration (dit.DIT_CONFIGS)
method = "imagenet"                # soflow.PRESETS entry: 'imagenet' (paper) | 'imagenet_released'
data = "data/imagenet256_latents"  # folder written by prepare_imagenet.py
out_dir = "out/imagenet"
steps = 400_000                    # optimizer steps of the whole run; also K of r(k, K) (Eq. 16)
batch_size = 256                   # global batch: all processes, all accumulation micro-steps
micro_batch = 0                    # images per process per forward/backward; 0 = batch_size / world size
optimizer = "adam"                 # 'adam' | 'adamw' | 'radam'
lr = 1e-4                          # constant, no warm-up, no decay (Appendix A)
beta1 = 0.9
beta2 = 0.99
weight_decay = 0.0
grad_clip = 0.0                    # clip the global gradient norm to this; 0 = never (the paper does not clip)
ema_decay = 0.9999
ema_every = 1                      # EMA update interval; each update applies ema_decay ** ema_every
ema_dtype = "float32"              # 'float32' | 'float64'
seed = 0                           # data order and all randomness (0 <= seed < 2**20)
precision = "auto"                 # 'bf16' (autocast) | 'fp32' | 'auto' = bf16 on CUDA, fp32 on the CPU
compile = None                     # torch.compile the network; None = on CUDA, off on the CPU
device = "auto"                    # 'cuda' | 'cpu' | 'auto'
log_every = 100                    # log line, CSV row (one host-device sync) every N steps
ckpt_every = 5000                  # checkpoint every N steps (and at the end); 0 = only at the end
keep_every = 0                     # also keep ckpt_STEP.pt every N steps; 0 = only the latest
sample_every = 10_000              # EMA sample grid and loss plot every N steps (and at the end); 0 = never
num_samples = 32                   # images in the sample grid
vae = ""                           # VAE decoding the sample grid; '' = the one that encoded the latents
stop_at = 0                        # stop (after saving a checkpoint) at this step, e.g. for a job's time limit
peak_flops = 0.0                   # the accelerator's dense bf16 FLOP/s for MFU; 0 = from PEAK_FLOPS
progress = True                    # tqdm progress bar on rank 0
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith("_") and (v is None or isinstance(v, (int, float, str, bool)))}

# The paper's runs (Appendix A, Table 4): batch 256, Adam (0.9, 0.99), lr 1e-4; B/4 for
# 400K iterations (80 epochs), the others for 240 epochs = 1.2M iterations. The
# '-released' settings use the released ImageNet config of the authors (SPEC section 7:
# mu_s = -1.0, r_end = 0.002, AdamW without weight decay, i.e. the same update as Adam).
PRESETS = {}
for _name, _steps in (("B/4", 400_000), ("B/2", 1_200_000), ("M/2", 1_200_000),
                      ("L/2", 1_200_000), ("XL/2", 1_200_000)):
    PRESETS[_name] = dict(model=_name, method="imagenet", steps=_steps, batch_size=256,
                          optimizer="adam", lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0, ema_decay=0.9999)
    PRESETS[_name + "-released"] = dict(PRESETS[_name], method="imagenet_released", optimizer="adamw")

# dense bf16 tensor-core peaks (vendor datasheets, FLOP/s), matched in this order against
# torch.cuda.get_device_name(); --peak_flops overrides
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
              ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("RTX 4090", 165e12))

LATENT_SCALE = 0.18215          # SD-VAE latents are scaled by this before training (SPEC section 7)
PREPARE_COMMAND = ("torchrun --nproc_per_node=8 prepare_imagenet.py "
                   "--data_dir=/path/to/imagenet/train --out_dir={out}")

# =============================================================================
# Configuration: parse, check. Shared with train_cifar.py.

def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text                     # a plain string: B/2, out/run1, cuda


def configure(argv, defaults, presets, net_keys, method_keys, doc, list_presets):
    """The run's settings: defaults, then --preset, then every other --name=value.
    Names of network arguments and method fields go to C['net_overrides'] and
    C['method_overrides']. --help and --list_presets print and exit."""
    pairs = []
    for arg in argv:
        if arg in ("-h", "--help"):
            print(doc)
            print("settings (default):")
            for k, v in defaults.items():
                print(f"  --{k}={v!r}")
            print(f"network arguments: {', '.join(sorted(net_keys))}")
            print(f"method fields: {', '.join(sorted(set(method_keys) - {'total_steps', 'num_classes'}))}")
            raise SystemExit(0)
        if arg == "--list_presets":
            list_presets()
            raise SystemExit(0)
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"bad argument {arg!r}: use --name=value (--help lists the names)")
        key, val = arg[2:].split("=", 1)
        pairs.append((key, val))
    C = dict(defaults)
    for key, val in pairs:
        if key == "preset":
            if val not in presets:
                raise SystemExit(f"unknown preset {val!r}; choose from {list(presets)} (--list_presets)")
            C.update(presets[val], preset=val)
    C["net_overrides"], C["method_overrides"] = {}, {}
    for key, val in pairs:
        if key == "preset":
            continue
        if key in defaults:
            C[key] = _coerce(key, val, defaults[key])
        elif key in net_keys:
            C["net_overrides"][key] = parse_value(val)
        elif key in method_keys:
            C["method_overrides"][key] = parse_value(val)
        else:
            raise SystemExit(f"unknown setting {key!r} (--help lists the names)")
    return C


def _coerce(key, text, default):
    if isinstance(default, str):
        return text
    val = parse_value(text)
    if default is None:                          # tri-state: None (automatic), True, False
        if val is not None and not isinstance(val, bool):
            raise SystemExit(f"--{key}: expected True, False or None, got {text!r}")
        return val
    if isinstance(default, float) and isinstance(val, int) and not isinstance(val, bool):
        val = float(val)
    if type(val) is not type(default):
        raise SystemExit(f"--{key}: expected a {type(default).__name__}, got {text!r}")
    return val


def world_from_env():
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) under plain python."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def check_train_config(C, world):
    """Every training value, before any compute. Returns the number of accumulation
    micro-steps. Raises ValueError naming the setting."""
    def need(ok, key, what):
        if not ok:
            raise ValueError(f"--{key}={C[key]!r}: {what}")
    pos_int = lambda k: isinstance(C[k], int) and C[k] >= 1
    nonneg_int = lambda k: isinstance(C[k], int) and C[k] >= 0
    for k in ("batch_size", "steps", "log_every", "ema_every", "num_samples"):
        need(pos_int(k), k, "must be an integer >= 1")
    for k in ("micro_batch", "ckpt_every", "keep_every", "sample_every", "stop_at"):
        need(nonneg_int(k), k, "must be an integer >= 0")
    need(C["steps"] < 2 ** 24, "steps", "must be < 2**24")
    need(0 <= C["seed"] < 2 ** 20, "seed", "must be in [0, 2**20)")
    need(math.isfinite(C["lr"]) and C["lr"] > 0, "lr", "must be a finite number > 0")
    for k in ("beta1", "beta2"):
        need(0 <= C[k] < 1, k, "must be in [0, 1)")
    need(C["weight_decay"] >= 0, "weight_decay", "must be >= 0")
    need(C["grad_clip"] >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
    need(0 <= C["ema_decay"] < 1, "ema_decay", "must be in [0, 1)")
    need(C["ema_dtype"] in ("float32", "float64"), "ema_dtype", "must be 'float32' or 'float64'")
    need(C["optimizer"] in OPTIMIZERS, "optimizer", f"must be one of {list(OPTIMIZERS)}")
    need(C["precision"] in ("auto", "bf16", "fp32"), "precision", "must be 'auto', 'bf16' or 'fp32'")
    need(C["device"] in ("auto", "cpu", "cuda"), "device", "must be 'auto', 'cpu' or 'cuda'")
    need(C["device"] != "cuda" or torch.cuda.is_available(), "device", "CUDA is not available")
    need(C["peak_flops"] >= 0, "peak_flops", "must be >= 0 (0 = from the table)")
    need(C["method"] in soflow.PRESETS, "method", f"must be one of {sorted(soflow.PRESETS)}")
    micro = C["micro_batch"] or C["batch_size"] // world
    if micro < 1 or C["batch_size"] % (micro * world):
        hint = (f"choose a --micro_batch that divides {C['batch_size'] // world}" if C["batch_size"] % world == 0
                else f"{world} processes cannot share it evenly")
        raise ValueError(f"--batch_size={C['batch_size']} is not divisible by micro_batch x world size = "
                         f"{micro} x {world} = {micro * world} (global batch = micro_batch x accumulation "
                         f"x world size); {hint}")
    C["micro_batch"] = micro
    accum = C["batch_size"] // (micro * world)
    need(world * accum < 2 ** 16, "micro_batch", "world size x accumulation must be < 2**16")
    return accum


def method_config(C, num_classes="keep"):
    """The SoFlowConfig of the run: the method preset, K = steps, the overrides (validated
    by SoFlowConfig). num_classes from the data replaces the preset's for conditional presets."""
    over = dict(C["method_overrides"])
    for k in ("total_steps", "num_classes"):
        if k in over:
            raise ValueError(f"--{k} cannot be set: it comes from "
                             f"{'--steps' if k == 'total_steps' else 'the data'}")
    cfg = soflow.preset(C["method"], total_steps=C["steps"], **over)
    if num_classes != "keep" and cfg.num_classes is not None:
        cfg = cfg.replace(num_classes=num_classes)
    return cfg


def check_split(cfg, micro, rank):
    """soflow_loss gives the first soflow.fm_count(cfg, B) images of each micro-batch to
    flow matching: say so when a micro-batch cannot be split in the proportion lambda."""
    n_fm = soflow.fm_count(cfg, micro)
    if rank == 0 and n_fm != cfg.fm_ratio * micro:
        print(f"note: fm_ratio {cfg.fm_ratio} of a micro-batch of {micro} is not a whole number of images: "
              f"{n_fm} go to flow matching, {micro - n_fm} to consistency", flush=True)


def method_keys():
    """SoFlowConfig's fields (total_steps and num_classes are refused by method_config)."""
    return {f.name for f in fields(soflow.SoFlowConfig)}


def constructor_keys(cls, exclude):
    return set(inspect.signature(cls.__init__).parameters) - {"self"} - set(exclude)

# =============================================================================
# Processes and devices. Shared with train_cifar.py.

def setup_distributed(C):
    """Join the torchrun group if there is one (NCCL on GPUs, gloo on the CPU).
    Returns (rank, world size, device)."""
    rank, world, local = world_from_env()
    want = C["device"] if C["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(f"cuda:{local}" if want == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True        # TF32 for whatever runs in fp32
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return rank, world, device


def barrier():
    if dist.is_initialized():
        dist.barrier()


def micro_seed(seed, step, index):
    """The seed of one micro-step: a function of (seed, step, micro-batch index in the
    step) only, so that every random draw is the same whatever the number of processes,
    and a resumed run draws what the interrupted one would have drawn."""
    return (seed << 40) | (step << 16) | index


def set_seed(seed, device):
    torch.random.default_generator.manual_seed(seed)    # the CPU generator
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)                    # this process's GPU: noise, times, dropout

# =============================================================================
# ImageNet latents (written by prepare_imagenet.py).

class LatentData:
    """The memory-mapped posterior means and stds of the SD-VAE encoder, and the labels.
    Folder layout: mean.npy, std.npy float32 (N, C, h, w); labels.npy int64 (N,);
    meta.json (complete, vae, image_size, num_classes, ...)."""

    def __init__(self, folder):
        how = "Make it with:\n  " + PREPARE_COMMAND.format(out=folder)
        meta_path = os.path.join(folder, "meta.json")
        if not os.path.isfile(meta_path):
            raise SystemExit(f"no ImageNet latents in {folder!r} (expected meta.json, mean.npy, std.npy, "
                             f"labels.npy written by prepare_imagenet.py). {how}")
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
            if not self.meta.get("complete"):
                raise ValueError("the encoding is not finished (meta.json: complete = false); "
                                 "run the same command again, it resumes")
            self.mean = np.load(os.path.join(folder, "mean.npy"), mmap_mode="r")
            self.std = np.load(os.path.join(folder, "std.npy"), mmap_mode="r")
            self.labels = np.load(os.path.join(folder, "labels.npy"))
            n, shape = len(self.labels), tuple(self.meta["latent_shape"])
            for name, a in (("mean", self.mean), ("std", self.std)):
                if a.dtype != np.float32 or a.shape != (n, *shape):
                    raise ValueError(f"{name}.npy is {a.dtype} {a.shape}, expected float32 {(n, *shape)}")
            if self.labels.dtype != np.int64 or self.labels.ndim != 1:
                raise ValueError(f"labels.npy is {self.labels.dtype} {self.labels.shape}, expected int64 (N,)")
            if n != self.meta["num_items"]:
                raise ValueError(f"{n} labels, meta.json says {self.meta['num_items']} items")
            self.num_classes = int(self.meta["num_classes"])
            if n and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
                raise ValueError(f"labels outside [0, {self.num_classes})")
        except SystemExit:
            raise
        except Exception as e:
            raise SystemExit(f"malformed ImageNet latents in {folder!r}: {type(e).__name__}: {e}. "
                             f"Delete the folder and encode again. {how}") from e
        self.shape = tuple(self.meta["latent_shape"])

    def __len__(self):
        return len(self.labels)

    def read(self, idx):
        """Host tensors (mean, std, labels) of the items idx, in that order."""
        return (torch.from_numpy(np.ascontiguousarray(self.mean[idx])),
                torch.from_numpy(np.ascontiguousarray(self.std[idx])),
                torch.from_numpy(self.labels[idx]))


@functools.lru_cache(maxsize=2)
def epoch_order(num_items, seed, epoch):
    """The permutation of the dataset for `epoch`, seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def step_indices(num_items, batch, seed, step):
    """The dataset indices of the global batch of `step`: epoch after epoch, a fresh
    permutation seeded by (seed, epoch), cut into batches (the incomplete last batch of
    an epoch is skipped). A function of its arguments only: resuming needs just `step`."""
    epoch, pos = divmod(step, num_items // batch)
    return epoch_order(num_items, seed, epoch)[pos * batch:(pos + 1) * batch]


def micro_slices(batch, micro, rank, world):
    """(micro-batch index j, slice of the global batch) for each accumulation micro-step
    of this process: micro-step a of rank r takes part j = a * world + r."""
    accum = batch // (micro * world)
    return [(a * world + rank, slice((a * world + rank) * micro, (a * world + rank + 1) * micro))
            for a in range(accum)]


class Prefetcher:
    """Runs `produce(step)` for step, step + 1, ... in a background thread, `depth`
    steps ahead of the training loop (reading memory-mapped latents overlaps the GPU)."""

    def __init__(self, produce, start, depth=2):
        self.q, self.stop = queue.Queue(maxsize=depth), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(produce, start), daemon=True)
        self.thread.start()

    def _run(self, produce, step):
        while not self.stop.is_set():
            try:
                item = produce(step)
            except BaseException as e:   # hand the error to the training loop
                item = e
            while not self.stop.is_set():
                try:
                    self.q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass
            if isinstance(item, BaseException):
                return
            step += 1

    def next(self):
        item = self.q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self.stop.set()
        self.thread.join()


class LatentObjective(nn.Module):
    """The whole SoFlow loss of one micro-batch, as one module call: soflow_loss calls the
    network several times per step (flow matching forward, consistency forward, its
    gradient-free target, the guidance forward), so DistributedDataParallel wraps this
    module and its forward runs once per micro-step. A fresh latent is drawn every time
    an image is used, x0 = (mean + std * noise) * 0.18215 (SPEC section 7)."""

    def __init__(self, net, cfg, scale=LATENT_SCALE):
        super().__init__()
        self.net, self.cfg, self.scale = net, cfg, scale

    def forward(self, step, mean, std, y):
        x0 = (mean + std * torch.randn_like(std)) * self.scale
        return soflow.soflow_loss(self.net, self.cfg, x0, y if self.cfg.num_classes is not None else None, step=step)


def dit_step_flops(net_config, cfg, micro, accum, world):
    """Arithmetic operations of one optimizer step, for MFU: 2 per multiply-add of
    dit.flops, x3 for each forward that carries gradients (forward + backward). The
    forwards are those soflow_loss makes on a micro-batch of `micro` images (first
    soflow.fm_count(cfg, micro) for flow matching, the rest for consistency): flow matching
    and consistency forwards with gradients on all of them, the gradient-free
    consistency target on the consistency part, and with guidance one gradient-free
    pass on the whole micro-batch plus the consistency part."""
    n_sc = micro - soflow.fm_count(cfg, micro)
    nograd = n_sc + ((micro + n_sc) if cfg.guided else 0)
    return 2 * dit.flops(net_config) * (3 * micro + nograd) * accum * world

# =============================================================================
# Optimizer, EMA, checkpoints, logs. Shared with train_cifar.py.

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}


def make_optimizer(C, net, device):
    """The optimizer over the trainable parameters only: the DiT's frozen sin-cos
    position embedding is a parameter (it is in the state dict) without gradients."""
    params = [p for p in net.parameters() if p.requires_grad]
    kw = dict(lr=C["lr"], betas=(C["beta1"], C["beta2"]), weight_decay=C["weight_decay"])
    if device.type == "cuda" and C["optimizer"] in ("adam", "adamw"):
        kw["fused"] = True                     # one kernel for the whole update
    return OPTIMIZERS[C["optimizer"]](params, **kw), params


class EMA:
    """An exponential moving average of the weights in its own copy of the network,
    updated every `every` steps with decay ** every (so that, as the released CIFAR-10
    recipe does, a sparse float64 average decays at the same rate per step)."""

    def __init__(self, net, decay, every, dtype):
        self.net = copy.deepcopy(net).to(getattr(torch, dtype)).eval().requires_grad_(False)
        self.decay, self.every = decay ** every, every

    @torch.no_grad()
    def update(self, net, step):
        if step % self.every:
            return
        dst = list(self.net.parameters())
        src = [p.detach().to(d.dtype) for p, d in zip(net.parameters(), dst)]
        torch._foreach_lerp_(dst, src, 1.0 - self.decay)      # ema += (1 - decay) (p - ema)


def save_atomic(obj, path):
    """torch.save to a temporary file in the same folder, flushed to disk, then renamed
    over `path`: a crash at any point leaves the previous file whole."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:                                   # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except OSError:
        pass


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# Values that may change when a run resumes: where things are written, how often,
# how fast (compile, micro-batch, device, attention kernel), the sample grid, and the
# stopping step. Everything else (the method, K = steps, the network, the data, batch,
# optimizer, EMA, seed, precision) must match the checkpoint.
RESUMABLE = {"train.out_dir", "train.data", "train.data_dir", "train.download", "train.micro_batch",
             "train.compile", "train.device", "train.log_every", "train.ckpt_every", "train.keep_every",
             "train.sample_every", "train.num_samples", "train.vae", "train.stop_at", "train.peak_flops",
             "train.progress", "train.preset", "net.attn"}


def config_diff(old, new):
    """The differing values of two checkpoint configs (RESUMABLE ones aside), as text."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: checkpoint {a.get(k, '(absent)')!r}, now {b.get(k, '(absent)')!r}"
            for k in sorted(set(a) | set(b)) if k not in RESUMABLE and a.get(k, "(absent)") != b.get(k, "(absent)")]


def peak_flops_of(device, override):
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS if k in name), None)


LOG_FIELDS = ["step", "epoch", "loss", "fm_mse", "fm_weight", "scm_mse", "scm_weight", "grad_norm",
              "r", "lr", "img_per_s", "mfu", "peak_mem_gib", "time_s"]


def truncate_log(path, step):
    """On resume: drop the rows the interrupted run wrote after its last checkpoint."""
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)


def append_log(path, row):
    new = not os.path.isfile(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in LOG_FIELDS})


def plot_log(csv_path, png_path):
    """The loss curves of the CSV log as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    step = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, keys, title in ((axes[0], ["loss"], "total loss (lambda L_FM + (1 - lambda) L_SCM)"),
                            (axes[1], ["fm_mse", "scm_mse"], "MSE (flow matching, consistency)"),
                            (axes[2], ["grad_norm"], "gradient norm")):
        for k in keys:
            pts = [(s, float(r[k])) for s, r in zip(step, rows) if r.get(k) not in ("", None)]
            if pts:
                ax.plot(*zip(*pts), label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        if keys != ["loss"]:
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def save_grid(images, path, nrow=8):
    """images (N, 3, H, W) in [-1, 1] -> a PNG grid."""
    from torchvision.utils import save_image
    save_image(((images.float().clamp(-1, 1) + 1) / 2).cpu(), path, nrow=nrow, padding=2)

# =============================================================================
# The training loop. Shared with train_cifar.py.

def train_step(run, model, opt, params, ema, micro, step, C, autocast, sums):
    """One optimizer step from this process's micro-batches `micro`: forward and backward
    of each (gradients accumulated, all-reduced by DDP on the last one only), the
    gradient norm (clipped if asked), the update, the EMA. Adds the loss's logs to the
    device tensors in `sums`. Returns (whether everything was finite, gradient norm),
    both device tensors: nothing here waits for the device."""
    rank, world, device, accum = run.rank, run.world, run.device, run.accum
    ok = torch.ones((), dtype=torch.bool, device=device)
    for a, mb in enumerate(micro):
        set_seed(micro_seed(C["seed"], step, a * world + rank), device)
        sync = model.no_sync() if world > 1 and a < accum - 1 else nullcontext()
        with sync:
            with autocast:
                loss, logs = model(step, *mb)
            (loss / accum).backward()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0) + v.float() / accum
        ok &= torch.isfinite(loss.detach())
    if C["grad_clip"] > 0:
        gnorm = torch.nn.utils.clip_grad_norm_(params, C["grad_clip"], foreach=True)
    else:
        gnorm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
    ok &= torch.isfinite(gnorm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.update(run.net, step + 1)
    return ok, gnorm.detach()


def train(C, run):
    """Train `run.net` with the loss module `run.objective` for C['steps'] steps (or up
    to C['stop_at']), resuming from out_dir/ckpt.pt if present.

    run: rank, world, device, accum (micro-steps per step), net (the bare network),
    objective (module; forward(step, *micro_batch) -> (loss, logs)), batches(step) (an
    object with .next() returning the list of this process's micro-batches of each
    step, from `step` on, and .close()), cfg (SoFlowConfig), config (the checkpoint's
    'config'), num_items (dataset size), sample(ema_net) -> images in [-1, 1] or None,
    step_flops (operations per optimizer step, for MFU) or None."""
    rank, world, device, accum = run.rank, run.world, run.device, run.accum
    master = rank == 0
    out = C["out_dir"]
    ckpt_path, log_path = os.path.join(out, "ckpt.pt"), os.path.join(out, "log.csv")
    if master:
        os.makedirs(out, exist_ok=True)
        for f in os.listdir(out):                       # leftovers of a save that was killed
            if f.startswith("ckpt.pt.") and f.endswith(".tmp"):
                os.unlink(os.path.join(out, f))
    barrier()

    opt, params = make_optimizer(C, run.net, device)
    ema = EMA(run.net, C["ema_decay"], C["ema_every"], C["ema_dtype"])
    step = 0
    if os.path.isfile(ckpt_path):
        # memory-mapped: the processes of a node share one copy of the file in the page cache
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        diff = config_diff(ckpt["config"], run.config)
        if diff:
            raise SystemExit(f"{ckpt_path} was written by a run with another configuration; "
                             f"use another --out_dir, or the checkpoint's values:\n  " + "\n  ".join(diff))
        run.net.load_state_dict(ckpt["model"])
        ema.net.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        rng = ckpt.get("rng", {})
        if rng.get("world_size") == world:
            torch.set_rng_state(rng["torch"][rank])
            if device.type == "cuda" and len(rng["cuda"][rank]):
                torch.cuda.set_rng_state(rng["cuda"][rank], device)
        if master:
            truncate_log(log_path, step)
            print(f"resumed from {ckpt_path} at step {step}", flush=True)
        del ckpt

    end = min(C["stop_at"] or C["steps"], C["steps"])
    if step >= end:
        if master:
            print(f"nothing to do: step {step}, stop at {end}", flush=True)
        return step
    model = run.objective
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            run.objective, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False, gradient_as_bucket_view=True)
    bf16 = C["precision"] == "bf16" or (C["precision"] == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    peak = peak_flops_of(device, C["peak_flops"])
    steps_per_epoch = run.num_items // C["batch_size"]

    # Figures to log live on the device and are read (one sync) at log steps only.
    sums, gsum = {}, torch.zeros((), device=device)
    NEVER = torch.iinfo(torch.int64).max
    first_bad = torch.full((), NEVER, dtype=torch.int64, device=device)   # first step with a non-finite loss
    since_log, busy, t_mark, t_start = 0, 0.0, time.perf_counter(), time.perf_counter()
    from tqdm import tqdm
    bar = tqdm(total=end, initial=step, disable=not (master and C["progress"]), dynamic_ncols=True,
               desc=os.path.basename(os.path.normpath(out)))
    say = bar.write if master and C["progress"] else (print if master else (lambda *a, **k: None))
    batches = run.batches(step)
    try:
        while step < end:
            ok, gnorm = train_step(run, model, opt, params, ema, batches.next(), step, C, autocast, sums)
            first_bad = torch.minimum(first_bad, torch.where(ok, NEVER, step + 1))
            gsum += gnorm
            step += 1
            since_log += 1
            bar.update(1)

            do_log = step % C["log_every"] == 0 or step == end
            do_ckpt = (C["ckpt_every"] and step % C["ckpt_every"] == 0) or step == end
            do_sample = C["sample_every"] and (step % C["sample_every"] == 0 or step == end)
            if not (do_log or do_ckpt or do_sample):
                continue
            # -- a sync point: check for non-finite values before anything is written
            bad = first_bad.clone()
            if world > 1:
                dist.all_reduce(bad, op=dist.ReduceOp.MIN)
            bad = bad.item()
            busy += time.perf_counter() - t_mark
            if bad != NEVER:
                raise SystemExit(
                    f"non-finite loss or gradient at step {bad}: training stopped. Nothing was saved after "
                    f"it; {ckpt_path} holds the last good state"
                    + (" (none was written)" if not os.path.isfile(ckpt_path) else "")
                    + ". Lower --lr, set --grad_clip, or check the data.")
            if do_log:
                keys = sorted(sums)
                vec = torch.stack([sums[k] for k in keys] + [gsum]) / since_log
                if world > 1:
                    dist.all_reduce(vec)
                    vec /= world
                vals = dict(zip(keys + ["grad_norm"], vec.tolist()))
                ips = C["batch_size"] * since_log / busy
                row = dict(step=step, epoch=f"{step / steps_per_epoch:.4f}", **{k: f"{v:.6g}" for k, v in vals.items()},
                           r=f"{soflow.r_at(run.cfg, step):.6g}", lr=C["lr"], img_per_s=f"{ips:.2f}",
                           time_s=f"{time.perf_counter() - t_start:.1f}")
                if run.step_flops and peak:
                    row["mfu"] = f"{run.step_flops * since_log / busy / (world * peak):.4f}"
                if device.type == "cuda":
                    row["peak_mem_gib"] = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}"
                if master:
                    append_log(log_path, row)
                    say(" | ".join(f"{k} {row[k]}" for k in ["step", "loss", "fm_mse", "scm_mse", "grad_norm",
                                                             "img_per_s", "mfu", "peak_mem_gib", "r"] if row.get(k)))
                    bar.set_postfix(loss=row["loss"], img_s=row["img_per_s"])
                sums, gsum, since_log, busy = {}, torch.zeros((), device=device), 0, 0.0
            if do_ckpt:
                save_checkpoint(ckpt_path, run, opt, ema, step, world, rank, device, C)
            if do_sample and master:
                images = run.sample(ema.net)
                if images is not None:
                    save_grid(images, os.path.join(out, f"samples_{step:07d}.png"))
                if os.path.isfile(log_path):
                    plot_log(log_path, os.path.join(out, "loss.png"))
            t_mark = time.perf_counter()
    finally:
        batches.close()
        bar.close()

    if world > 1:   # the replicas must hold the same weights: compare a checksum
        cs = torch.stack([p.detach().double().sum() for p in run.net.parameters()]).sum().reshape(1)
        allcs = [torch.zeros_like(cs) for _ in range(world)]
        dist.all_gather(allcs, cs)
        allcs = [float(c) for c in allcs]
        sys.stdout.write(f"[rank {rank}] parameter checksum {allcs[rank]!r}\n")   # one write: lines of
        sys.stdout.flush()                                                        # processes do not mix
        if len(set(allcs)) != 1:
            raise RuntimeError(f"the processes' weights differ: checksums {allcs}")
    if master:
        print(f"done: step {step}, checkpoint {ckpt_path}", flush=True)
    return step


def save_checkpoint(path, run, opt, ema, step, world, rank, device, C):
    """The checkpoint (COMMON format): model, ema, optimizer, step, config, plus what
    exact resumption needs (the data position and every process's RNG state; the data
    order itself follows from seed, step and the dataset size)."""
    states = [torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda"
              else torch.empty(0, dtype=torch.uint8)]
    gathered = [states]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, states)
    if rank == 0:
        per_epoch = run.num_items // C["batch_size"]
        ckpt = {
            "model": run.net.state_dict(),
            "ema": ema.net.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "config": run.config,
            "data": {"num_items": run.num_items, "epoch": step // per_epoch, "batch_in_epoch": step % per_epoch,
                     "order": "numpy.random.default_rng([seed, epoch]).permutation(num_items), "
                              "cut into batches of batch_size"},
            "rng": {"world_size": world, "torch": [g[0] for g in gathered], "cuda": [g[1] for g in gathered]},
        }
        save_atomic(ckpt, path)
        if C["keep_every"] and step % C["keep_every"] == 0:
            keep = os.path.join(os.path.dirname(path), f"ckpt_{step:07d}.pt")
            if os.path.exists(keep):
                os.unlink(keep)
            try:
                os.link(path, keep)            # the same file under a second name, no copy
            except OSError:
                import shutil
                shutil.copyfile(path, keep)
    barrier()

# =============================================================================
# ImageNet.

def list_presets():
    for name, p in PRESETS.items():
        cfg = soflow.preset(p["method"], total_steps=p["steps"])
        net = {k: v for k, v in dit.DIT_CONFIGS[p["model"]].items()}
        print(f"{name}:")
        print("  " + " ".join(f"--{k}={v}" for k, v in p.items()))
        print("  network: " + ", ".join(f"{k}={v}" for k, v in net.items()))
        print("  method: " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    net_keys = constructor_keys(dit.DiT, exclude=("input_size", "in_channels", "num_classes"))
    C = configure(argv, DEFAULTS, PRESETS, net_keys, method_keys(), __doc__, list_presets)
    rank, world, _ = world_from_env()
    try:                                      # every value is checked before any compute
        accum = check_train_config(C, world)
        if C["model"] not in dit.DIT_CONFIGS:
            raise ValueError(f"--model={C['model']!r}: choose from {list(dit.DIT_CONFIGS)}")
        cfg = method_config(C)
    except ValueError as e:
        raise SystemExit(f"configuration error: {e}")
    latents = LatentData(C["data"])
    if len(latents) < C["batch_size"]:
        raise SystemExit(f"{C['data']} holds {len(latents)} latents, fewer than one batch of {C['batch_size']}")
    cfg = method_config(C, num_classes=latents.num_classes)
    check_split(cfg, C["micro_batch"], rank)
    channels, H, W = latents.shape
    try:
        with torch.device("meta"):           # validates the network arguments without compute
            dit.dit_from_name(C["model"], input_size=H, in_channels=channels, num_classes=latents.num_classes,
                              **C["net_overrides"])
    except (ValueError, TypeError) as e:
        raise SystemExit(f"configuration error: network: {e}")
    if H != W:
        raise SystemExit(f"latents of shape {latents.shape}: the DiT needs square latents")

    rank, world, device = setup_distributed(C)
    torch.manual_seed(C["seed"])              # the same initial weights in every process
    net = dit.dit_from_name(C["model"], input_size=H, in_channels=channels, num_classes=latents.num_classes,
                            **C["net_overrides"]).to(device)
    use_compile = C["compile"] if C["compile"] is not None else device.type == "cuda"
    fwd = torch.compile(net, dynamic=False) if use_compile else net
    vae_name = C["vae"] or latents.meta["vae"]
    config = {
        "script": "train_imagenet",
        "net": {"kind": "dit", **net.config},
        "soflow": cfg.to_dict(),
        "data": {"kind": "latents", "image_size": latents.meta["image_size"], "vae": latents.meta["vae"],
                 "latent_scale": LATENT_SCALE, "num_classes": latents.num_classes, "num_items": len(latents),
                 "latent_shape": list(latents.shape), "flip": latents.meta.get("flip", False)},
        "train": {k: C[k] for k in DEFAULTS},
    }
    micro = C["micro_batch"]
    pin = device.type == "cuda"

    def produce(step):        # host side, in the prefetch thread: this process's micro-batches
        idx = step_indices(len(latents), C["batch_size"], C["seed"], step)
        out = []
        for _, sl in micro_slices(C["batch_size"], micro, rank, world):
            m, s, y = latents.read(idx[sl])
            out.append(tuple(u.pin_memory() if pin else u for u in (m, s, y)))
        return out

    class Batches:
        def __init__(self, start):
            self.p = Prefetcher(produce, start)

        def next(self):
            return [tuple(u.to(device, non_blocking=True) for u in mb) for mb in self.p.next()]

        def close(self):
            self.p.close()

    sampler = None
    if rank == 0 and C["sample_every"]:
        sampler = make_latent_sampler(C, cfg, net, device, vae_name, latents)

    run = SimpleNamespace(rank=rank, world=world, device=device, accum=accum, net=net,
                          objective=LatentObjective(fwd, cfg), batches=Batches, cfg=cfg, config=config,
                          num_items=len(latents), sample=sampler,
                          step_flops=dit_step_flops(net.config, cfg, micro, accum, world))
    if rank == 0:
        print(f"DiT-{C['model']} {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters | "
              f"{len(latents)} latents {latents.shape}, {latents.num_classes} classes | batch {C['batch_size']} = "
              f"{micro} x {accum} accumulation x {world} processes | {device}, "
              f"{'bf16' if C['precision'] == 'bf16' or (C['precision'] == 'auto' and device.type == 'cuda') else 'fp32'}"
              f"{', compiled' if use_compile else ''}", flush=True)
    try:
        return train(C, run)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def make_latent_sampler(C, cfg, net, device, vae_name, latents):
    """A function EMA network -> decoded 1-NFE samples (fixed noise and labels)."""
    try:
        from diffusers.models import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(vae_name, low_cpu_mem_usage=False).to(device).eval().requires_grad_(False)
    except Exception as e:
        raise SystemExit(f"cannot load the VAE {vae_name!r} for the sample grids ({type(e).__name__}: {e}). "
                         f"Pass --vae=PATH (a local copy: huggingface-cli download stabilityai/sd-vae-ft-mse "
                         f"--local-dir sd-vae-ft-mse), or --sample_every=0 to train without sample grids.")
    g = torch.Generator().manual_seed(C["seed"])
    noise = torch.randn(C["num_samples"], *latents.shape, generator=g).to(device)
    # a few recognisable ImageNet classes (golden retriever, otter, red panda, geyser,
    # macaw, valley, balloon, arctic fox), repeated; any class index for smaller label sets
    show = [207, 360, 387, 974, 88, 979, 417, 279]
    labels = torch.tensor([show[i % 8] if latents.num_classes == 1000 else i % latents.num_classes
                           for i in range(C["num_samples"])], device=device)
    holder = copy.deepcopy(net).float().eval().requires_grad_(False)

    @torch.no_grad()
    def sample(ema_net):
        holder.load_state_dict(ema_net.state_dict())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            z = soflow.sample(holder, cfg, noise, labels if cfg.num_classes is not None else None)
        return torch.cat([vae.decode(u.float() / LATENT_SCALE).sample for u in z.split(16)])

    return sample


if __name__ == "__main__":
    main()
