"""
Train SoFlow on CIFAR-10, unconditional, in pixel space, with the U-Net of unet.py
(the paper's Appendix A and the released recipe; SPEC sections 7 and 8).

    # the paper's run on one node of 8 GPUs (128 images per GPU, 1024 per step)
    torchrun --nproc_per_node=8 train_cifar.py --preset=cifar10
    # the released recipe on 2 GPUs: 128 per GPU and 4 accumulation micro-steps per step
    torchrun --nproc_per_node=2 train_cifar.py --preset=cifar10_released --micro_batch=128
    python train_cifar.py --list_presets          # the named settings and their values
    python train_cifar.py --help                  # every setting and its default

Settings work as in train_imagenet.py: the plain values below, --name=value
overrides, --preset=NAME first; any argument of unet.UNet (--model_channels=64,
--dropout=0.2) and any field of soflow.SoFlowConfig (--p=0.5) as well. The training
loop, the checkpoints, the logs and resumption are those of train_imagenet.py,
imported from there; this file holds what is particular to CIFAR-10: the data, the
EDM-style augmentation and the U-Net.

Data: torchvision's CIFAR-10 (the 50,000 training images) in --data_dir, downloaded
there if missing; pixels to [-1, 1]; the whole set lives on the device.

Augmentation (the released recipe; SPEC section 7): every image is flipped
horizontally with probability `xflip` (0.5), and with probability `augment_p` (0.12)
each of three geometric transforms is drawn, as in EDM's augmentation pipeline:
isotropic scaling by 2^(0.2 w), anisotropic scaling by 2^(0.2 w) along a direction
(rotated by an angle r uniform in [-pi, pi) in half of the cases) and 1 / 2^(0.2 w)
across it, and a translation by 0.125 x (image size) x (w_x, w_y), all w ~ N(0, 1),
applied as one affine resampling (bilinear, mirrored borders). EDM's pipeline has
more transforms (y-flip, rotation, colour) and resamples on a wavelet-filtered 2x
grid; only the four transforms of SPEC are here, with plain bilinear resampling. The
network sees what was done through its 6-dim augmentation label, in the order and
encoding of EDM's pipeline for these transforms:

    [flip (0 or 1), w_scale, w_aniso cos r, w_aniso sin r, w_x, w_y]    (0 where not drawn)

so that sampling with the label 0 (augment_labels=None) asks for un-augmented images.
"""

import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import soflow
import unet
import train_imagenet as T      # the shared machinery: configure, train, checkpoints, EMA, logs

# -----------------------------------------------------------------------------
# configuration (override with --name=value)
preset = ""                        # a named setting (PRESETS below), applied before the other values
method = "cifar10"                 # soflow.PRESETS entry: 'cifar10' (paper) | 'cifar10_released'
data_dir = "data"                  # torchvision's CIFAR-10 root (holds cifar-10-batches-py/)
download = True                    # download CIFAR-10 into data_dir if it is not there
out_dir = "out/cifar10"
steps = 800_000                    # optimizer steps of the whole run; also K of r(k, K) (Eq. 16)
batch_size = 1024                  # global batch: all processes, all accumulation micro-steps
micro_batch = 0                    # images per process per forward/backward; 0 = batch_size / world size
optimizer = "radam"                # 'radam' | 'adam' | 'adamw'
lr = 1e-4
beta1 = 0.9
beta2 = 0.999
weight_decay = 0.0
grad_clip = 0.0                    # clip the global gradient norm to this; 0 = never
ema_decay = 0.9999
ema_every = 16                     # the released recipe updates a float64 EMA every 16 steps ...
ema_dtype = "float64"              # ... with decay 0.9999 ** 16
augment_p = 0.12                   # probability of each geometric transform (0 = none)
xflip = 0.5                        # probability of a horizontal flip
seed = 0                           # data order and all randomness (0 <= seed < 2**20)
precision = "auto"                 # 'bf16' (autocast) | 'fp32' | 'auto' = bf16 on CUDA, fp32 on the CPU
compile = None                     # torch.compile the network; None = on CUDA, off on the CPU
device = "auto"                    # 'cuda' | 'cpu' | 'auto'
log_every = 100                    # log line, CSV row (one host-device sync) every N steps
ckpt_every = 5000                  # checkpoint every N steps (and at the end); 0 = only at the end
keep_every = 0                     # also keep ckpt_STEP.pt every N steps; 0 = only the latest
sample_every = 10_000              # EMA sample grid and loss plot every N steps (and at the end); 0 = never
num_samples = 64                   # images in the sample grid
stop_at = 0                        # stop (after saving a checkpoint) at this step, e.g. for a job's time limit
peak_flops = 0.0                   # the accelerator's dense bf16 FLOP/s for MFU; 0 = from the table
progress = True                    # tqdm progress bar on rank 0
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith("_") and (v is None or isinstance(v, (int, float, str, bool)))}

# The paper's setting (Appendix A: batch 1024, 800K iterations, RAdam lr 1e-4) and the
# released one (SPEC section 7: RAdam betas (0.9, 0.999), EMA 0.9999 in float64 every 16
# steps, the augmentation, U-Net dropout 0.3). They differ in the method's values only:
# the paper does not describe EMA interval, augmentation or dropout, so both use the
# released ones (the U-Net of SPEC section 8 has the 6-dim augmentation input).
PRESETS = {
    name: dict(method=name, steps=800_000, batch_size=1024, optimizer="radam", lr=1e-4, beta1=0.9, beta2=0.999,
               weight_decay=0.0, ema_decay=0.9999, ema_every=16, ema_dtype="float64", augment_p=0.12, xflip=0.5)
    for name in ("cifar10", "cifar10_released")
}

CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch", "batches.meta"]

# =============================================================================
# Data.

def load_cifar10(root, download, rank):
    """The training images, uint8 (N, 3, 32, 32), through torchvision; a message that
    says how to get them if they are missing or unreadable."""
    from torchvision.datasets import CIFAR10
    folder = os.path.join(root, "cifar-10-batches-py")
    how = (f"Get it on a machine with internet access with\n"
           f"  python -c \"import torchvision; torchvision.datasets.CIFAR10('{root}', download=True)\"\n"
           f"and copy {folder}/ here, or download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
           f"and extract it in {root}/ (it makes {folder}/ with {', '.join(CIFAR_FILES)}).")
    present = all(os.path.isfile(os.path.join(folder, f)) for f in CIFAR_FILES)
    if not present:
        if not download:
            raise SystemExit(f"CIFAR-10 is not in {folder}/ (--download=False). {how}")
        if rank == 0:
            try:
                CIFAR10(root=root, train=True, download=True)
            except Exception as e:
                raise SystemExit(f"CIFAR-10 is not in {folder}/ and could not be downloaded "
                                 f"({type(e).__name__}: {e}). {how}") from e
        T.barrier()
    try:
        ds = CIFAR10(root=root, train=True, download=False)
        x, y = np.asarray(ds.data), np.asarray(ds.targets)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(y) != len(x):
            raise ValueError(f"images {x.dtype} {x.shape} and {len(y)} labels, expected uint8 (N, 32, 32, 3) "
                             f"and N labels")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ValueError("labels outside 0..9")
    except Exception as e:
        again = "the next run downloads it again. Or: " if download else ""
        raise SystemExit(f"malformed CIFAR-10 in {folder}/ ({type(e).__name__}: {e}). Delete the folder; "
                         f"{again}{how}") from e
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

# =============================================================================
# EDM-style geometric augmentation (x-flip, scaling, anisotropy, translation).

AUGMENT_DIM = 6


def augment(x, p=0.12, xflip=0.5, scale_std=0.2, aniso_std=0.2, aniso_rotate_prob=0.5, translate_std=0.125):
    """Augment images x (N, C, H, W) in [-1, 1]. Returns (images, labels (N, 6));
    the layout of the labels is in the module docstring."""
    N, dev = x.shape[0], x.device
    u = lambda: torch.rand(N, device=dev)
    drawn = lambda w: torch.where(u() < p, w, torch.zeros_like(w))
    flip = (u() < xflip).float()
    w_scale = drawn(torch.randn(N, device=dev))
    w_aniso = drawn(torch.randn(N, device=dev))
    angle = torch.where(u() < aniso_rotate_prob, (2 * u() - 1) * math.pi, torch.zeros(N, device=dev))
    w_xy = torch.where((u() < p)[:, None], torch.randn(N, 2, device=dev), torch.zeros(N, 2, device=dev))
    labels = torch.stack([flip, w_scale, w_aniso * angle.cos(), w_aniso * angle.sin(), w_xy[:, 0], w_xy[:, 1]], 1)
    images = warp(x, flip, 2 ** (scale_std * w_scale), 2 ** (aniso_std * w_aniso), angle,
                  w_xy[:, 0] * translate_std * x.shape[3], w_xy[:, 1] * translate_std * x.shape[2])
    return images, labels


def warp(x, flip, scale, aniso, angle, tx, ty):
    """Flip where flip = 1, then the geometric transform p -> T A S p about the image
    center (pixel units, y downwards): S scales by `scale`, A stretches by `aniso` along
    the direction (cos angle, -sin angle) and by 1 / aniso across it, T moves the content
    by (tx, ty) pixels. Bilinear resampling, mirrored borders. Images with the identity
    transform are returned untouched."""
    x = torch.where(flip[:, None, None, None] > 0, x.flip(3), x)
    N, _, H, W = x.shape
    c, s = angle.cos(), angle.sin()
    # inverse map q = S^-1 A^-1 (p - t): output pixel p reads the input at q, with
    # A^-1 = R(-angle) diag(1/aniso, aniso) R(angle) and R(a) = [[cos a, -sin a], [sin a, cos a]]
    a11 = c * c / aniso + s * s * aniso
    a12 = c * s * (aniso - 1 / aniso)
    a22 = s * s / aniso + c * c * aniso
    M = torch.stack([torch.stack([a11, a12], 1), torch.stack([a12, a22], 1)], 1) / scale[:, None, None]
    t = torch.stack([tx, ty], 1)
    # to grid_sample's normalised coordinates (align_corners=False): u = 2 p / size
    D = torch.tensor([2 / W, 2 / H], device=x.device, dtype=M.dtype)
    theta = torch.cat([D[None, :, None] * M / D[None, None, :],
                       -(D[None, :, None] * (M @ t[:, :, None]))], 2)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    moved = (scale != 1) | (aniso != 1) | (tx != 0) | (ty != 0)
    return torch.where(moved[:, None, None, None], warped, x)

# =============================================================================
# The loss of a micro-batch.

class PixelObjective(nn.Module):
    """The whole loss of one micro-batch as one module call (DDP wraps this module:
    see train_imagenet.LatentObjective): uint8 images -> [-1, 1] -> augmentation ->
    SoFlow loss, whose every network call gets the augmentation labels of its images
    (soflow_loss's net_kwargs)."""

    def __init__(self, net, cfg, augment_p, xflip, use_labels):
        super().__init__()
        self.net, self.cfg, self.augment_p, self.xflip, self.use_labels = net, cfg, augment_p, xflip, use_labels

    def forward(self, step, images):
        x0 = images.float() / 127.5 - 1
        x0, labels = augment(x0, self.augment_p, self.xflip)
        extra = {"augment_labels": labels} if self.use_labels else None
        return soflow.soflow_loss(self.net, self.cfg, x0, step=step, net_kwargs=extra)


def unet_forward_flops(config):
    """Arithmetic operations (2 per multiply-add) of one forward pass per image, counted by
    torch's FLOP counter on a shape-only (meta) copy of the network."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        net = unet.UNet(**{**config, "attn": "math"})     # the counter does not see every fused kernel
        r, c = config["img_resolution"], config["in_channels"]
        aug = torch.zeros(1, config["augment_dim"]) if config["augment_dim"] else None
        with FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, c, r, r), torch.ones(1), torch.zeros(1), augment_labels=aug)
    return counter.get_total_flops()


def list_presets():
    for name, p in PRESETS.items():
        print(f"{name}:")
        print("  " + " ".join(f"--{k}={v}" for k, v in p.items()))
        with torch.device("meta"):
            net = unet.UNet()
        print("  network: " + ", ".join(f"{k}={v}" for k, v in net.config.items()))
        print("  method: " + ", ".join(f"{k}={v}" for k, v in soflow.preset(p["method"], total_steps=p["steps"]).to_dict().items()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    net_keys = T.constructor_keys(unet.UNet, exclude=("img_resolution", "in_channels"))
    C = T.configure(argv, DEFAULTS, PRESETS, net_keys, T.method_keys(), __doc__, list_presets)
    rank, world, _ = T.world_from_env()
    try:                                      # every value is checked before any compute
        accum = T.check_train_config(C, world)
        for k in ("augment_p", "xflip"):
            if not 0 <= C[k] <= 1:
                raise ValueError(f"--{k}={C[k]!r}: must be in [0, 1]")
        cfg = T.method_config(C)
        T.check_split(cfg, C["micro_batch"], rank)
        if cfg.num_classes is not None:
            raise ValueError(f"--method={C['method']!r} is class-conditional; CIFAR-10 is trained unconditionally")
        with torch.device("meta"):            # the network arguments, without compute
            probe = unet.UNet(img_resolution=32, in_channels=3, **C["net_overrides"])
        if not 0 <= probe.config["dropout"] < 1:
            raise ValueError(f"--dropout={probe.config['dropout']!r}: must be in [0, 1)")
        if probe.augment_dim not in (0, AUGMENT_DIM):
            raise ValueError(f"--augment_dim={probe.augment_dim}: the augmentation label has {AUGMENT_DIM} "
                             f"dimensions (0 = no label)")
        if C["augment_p"] > 0 and not probe.augment_dim:
            raise ValueError("--augment_p > 0 needs the augmentation label (augment_dim=6): without it the "
                             "network learns to generate scaled and shifted images")
    except (ValueError, TypeError) as e:
        raise SystemExit(f"configuration error: {e}")

    rank, world, device = T.setup_distributed(C)
    images = load_cifar10(C["data_dir"], C["download"], rank)
    if len(images) < C["batch_size"]:
        raise SystemExit(f"CIFAR-10 in {C['data_dir']} holds {len(images)} images, fewer than one batch "
                         f"of {C['batch_size']}")
    images = images.to(device)
    torch.manual_seed(C["seed"])              # the same initial weights in every process
    net = unet.UNet(img_resolution=32, in_channels=3, **C["net_overrides"]).to(device)
    use_compile = C["compile"] if C["compile"] is not None else device.type == "cuda"
    if use_compile and net.config["dropout"] > 0:
        # the consistency loss replays the dropout masks of its gradient pass in the
        # gradient-free target pass (soflow.scm_loss): eager's random ops make compiled
        # graphs draw exactly what eager would, whatever their fusion
        from torch._inductor import config as inductor_config
        inductor_config.fallback_random = True
    fwd = torch.compile(net, dynamic=False) if use_compile else net
    config = {
        "script": "train_cifar",
        "net": {"kind": "unet", **net.config},
        "soflow": cfg.to_dict(),
        "data": {"kind": "cifar10", "image_size": 32, "num_classes": None, "num_items": len(images)},
        "train": {k: C[k] for k in DEFAULTS},
    }
    micro = C["micro_batch"]

    class Batches:            # the data live on the device: index them
        def __init__(self, start):
            self.step = start

        def next(self):
            idx = torch.from_numpy(T.step_indices(len(images), C["batch_size"], C["seed"], self.step))
            idx = (idx.pin_memory() if device.type == "cuda" else idx).to(device, non_blocking=True)
            self.step += 1
            return [(images[idx[sl]],) for _, sl in T.micro_slices(C["batch_size"], micro, rank, world)]

        def close(self):
            pass

    noise = torch.randn(C["num_samples"], 3, 32, 32, generator=torch.Generator().manual_seed(C["seed"])).to(device)
    holder = None

    @torch.no_grad()
    def sample(ema_net):      # 1-NFE samples of the EMA network, fixed noise
        nonlocal holder
        if holder is None:
            holder = unet.UNet(**net.config).to(device).eval()
        holder.load_state_dict(ema_net.state_dict())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return soflow.sample(holder, cfg, noise)

    n_sc = micro - soflow.fm_count(cfg, micro)
    run = SimpleNamespace(
        rank=rank, world=world, device=device, accum=accum, net=net,
        objective=PixelObjective(fwd, cfg, C["augment_p"], C["xflip"], bool(net.augment_dim)),
        batches=Batches, cfg=cfg, config=config, num_items=len(images), sample=sample,
        # forwards with gradients (x3) on every image, the gradient-free consistency target on the rest
        step_flops=unet_forward_flops(net.config) * (3 * micro + n_sc) * accum * world)
    if rank == 0:
        print(f"U-Net {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters | {len(images)} images | "
              f"batch {C['batch_size']} = {micro} x {accum} accumulation x {world} processes | {device}"
              f"{', compiled' if use_compile else ''}", flush=True)
    try:
        return T.train(C, run)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
