"""
Train SoFlow on CIFAR-10, unconditional, in pixel space, with the U-Net of unet.py (the
paper's App. A and the authors' cifar.yaml).

    # the paper's run on one node of 8 GPUs (128 images per GPU, 1024 per step)
    torchrun --nproc_per_node=8 train_cifar.py --preset cifar10
    # the authors' released recipe on 2 GPUs: 128 per GPU, 4 accumulation micro-steps
    torchrun --nproc_per_node=2 train_cifar.py --preset cifar10_released --micro_batch 128
    python train_cifar.py --list_presets         # the named settings
    python train_cifar.py --help                 # every setting, network argument and method field

Settings work as in train_imagenet.py: the plain values below, --name value overrides,
--preset NAME first; any unet.UNet argument (--model_channels 64) and any SoFlowConfig
field (--p 0.5) as well. Outputs as train_imagenet.py's.

Data: torchvision's CIFAR-10 (the 50,000 training images) in --data_dir, downloaded there
if missing; pixels to [-1, 1]; the whole set lives on the device.

Augmentation (the authors' recipe, after EDM's pipeline): each image is flipped
horizontally with probability `xflip`, and with probability `augment_p` each of three
geometric transforms is drawn: isotropic scaling by 2^(0.2 w), anisotropic scaling by
2^(0.2 w) along a direction (rotated by an angle uniform in [-pi, pi) in half of the
cases) and 1 / 2^(0.2 w) across it, and a translation by 0.125 x size x (w_x, w_y), all
w ~ N(0, 1), applied as one bilinear resampling with mirrored borders (EDM has more
transforms and resamples on a wavelet-filtered 2x grid; these four are the recipe's). The
network sees what was done through its 6-dim augmentation label, in EDM's order,
[flip, w_scale, w_aniso cos r, w_aniso sin r, w_x, w_y] (0 where not drawn), so that
sampling with no label asks for un-augmented images.
"""

import functools
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import checkpoints
import settings
import soflow
import trainer
import unet

# -----------------------------------------------------------------------------
preset = ""                        # named settings applied first (PRESETS below)
method = "cifar10"                 # soflow.PRESETS entry: 'cifar10' (paper) or 'cifar10_released'
data_dir = "data"                  # torchvision's CIFAR-10 root (holds cifar-10-batches-py/)
download = True                    # download CIFAR-10 into data_dir if it is not there
out_dir = "out/cifar10"
init_from = ""                     # fine-tune: our checkpoint, a released file or configuration name
steps = 800_000                    # optimizer steps of the run; also K of r(k, K)
batch_size = 1024                  # global batch: all processes, all micro-steps
micro_batch = 0                    # images per process per forward; 0 = batch_size / world size
optimizer = "radam"
lr = 1e-4
beta1 = 0.9
beta2 = 0.999
weight_decay = 0.0
grad_clip = 0.0                    # clip the gradient norm to this; 0 = never
ema_decay = 0.9999
ema_every = 16                     # the authors update a float64 EMA every 16 steps ...
ema_dtype = "float64"              # ... with decay 0.9999 ** 16
augment_p = 0.12                   # probability of each geometric transform (0 = none)
xflip = 0.5                        # probability of a horizontal flip
seed = 0                           # the data order and every random draw
precision = "auto"                 # 'bf16' autocast, 'fp32', 'auto' = bf16 on CUDA, fp32 on the CPU
compile = "auto"                   # torch.compile the network: 'auto' = on CUDA only
device = "auto"
log_every = 100                    # a log row (one host-device sync) every N steps
ckpt_every = 5000                  # a checkpoint every N steps and at the end; 0 = at the end only
keep_every = 0                     # also keep ckpt_STEP.pt every N steps; 0 = only the latest
sample_every = 10_000              # EMA sample grid and loss plot every N steps; 0 = never
num_samples = 64                   # images in the sample grid
stop_at = 0                        # stop (after a checkpoint) at this step
peak_tflops = 0.0                  # the accelerator's dense bf16 TFLOP/s for MFU; 0 = from its name
progress = True                    # a tqdm bar on rank 0
# -----------------------------------------------------------------------------
SETTINGS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))}

# The paper's setting (App. A: batch 1024, 800K steps, RAdam lr 1e-4) and the authors'
# cifar.yaml; they differ in the method's values only (the EMA interval, the augmentation
# and the U-Net's dropout are the release's in both: the paper does not give them).
PRESETS = {name: dict(method=name, steps=800_000, batch_size=1024, optimizer="radam", lr=1e-4, beta1=0.9,
                      beta2=0.999, ema_decay=0.9999, ema_every=16, ema_dtype="float64", augment_p=0.12, xflip=0.5)
           for name in ("cifar10", "cifar10_released")}
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def load_cifar10(root, download, rank):
    """The training images, uint8 (N, 3, 32, 32), through torchvision, or a message that says
    how to get them."""
    from torchvision.datasets import CIFAR10
    folder = os.path.join(root, "cifar-10-batches-py")
    how = (f"get it on a machine with internet access (python -c \"import torchvision; torchvision.datasets."
           f"CIFAR10('{root}', download=True)\") and copy {folder}/ here, or extract "
           f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz in {root}/")
    if not all(os.path.isfile(os.path.join(folder, f)) for f in CIFAR_FILES):
        if not download:
            raise SystemExit(f"error: CIFAR-10 is not in {folder}/ (--download=False); {how}")
        if rank == 0:
            try:
                CIFAR10(root=root, train=True, download=True)
            except Exception as e:           # offline, proxy, disk full: the same way out
                raise SystemExit(f"error: CIFAR-10 is not in {folder}/ and could not be downloaded "
                                 f"({type(e).__name__}: {e}); {how}") from None
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    try:
        ds = CIFAR10(root=root, train=True, download=False)
        x = np.asarray(ds.data)
        if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or len(ds.targets) != len(x):
            raise ValueError(f"images {x.dtype} {x.shape} and {len(ds.targets)} labels")
    except Exception as e:                   # any unreadable file: the same way out
        raise SystemExit(f"error: malformed CIFAR-10 in {folder}/ ({type(e).__name__}: {e}); delete the folder; "
                         f"{how}") from None
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def augment(x, p=0.12, xflip=0.5):
    """Augment images x (N, C, H, W) in [-1, 1]; returns (images, labels (N, 6))."""
    N, dev = x.shape[0], x.device
    u = lambda: torch.rand(N, device=dev)
    drawn = lambda w: torch.where(u() < p, w, torch.zeros_like(w))
    flip = (u() < xflip).float()
    w_scale, w_aniso = drawn(torch.randn(N, device=dev)), drawn(torch.randn(N, device=dev))
    angle = torch.where(u() < 0.5, (2 * u() - 1) * math.pi, torch.zeros(N, device=dev))
    w_xy = torch.where((u() < p)[:, None], torch.randn(N, 2, device=dev), torch.zeros(N, 2, device=dev))
    labels = torch.stack([flip, w_scale, w_aniso * angle.cos(), w_aniso * angle.sin(), w_xy[:, 0], w_xy[:, 1]], 1)
    return warp(x, flip, 2 ** (0.2 * w_scale), 2 ** (0.2 * w_aniso), angle, w_xy[:, 0] * 0.125 * x.shape[3],
                w_xy[:, 1] * 0.125 * x.shape[2]), labels


def warp(x, flip, scale, aniso, angle, tx, ty):
    """Flip where flip = 1, then p -> T A S p about the image center (pixels, y down): S
    scales by `scale`, A stretches by `aniso` along (cos angle, -sin angle) and by 1 / aniso
    across it, T moves the content by (tx, ty). Untransformed images come back untouched."""
    x = torch.where(flip[:, None, None, None] > 0, x.flip(3), x)
    N, _, H, W = x.shape
    c, s = angle.cos(), angle.sin()
    # output pixel p reads the input at S^-1 A^-1 (p - t), A^-1 = R(-angle) diag(1/aniso, aniso) R(angle)
    a11, a12, a22 = c * c / aniso + s * s * aniso, c * s * (aniso - 1 / aniso), s * s / aniso + c * c * aniso
    M = torch.stack([torch.stack([a11, a12], 1), torch.stack([a12, a22], 1)], 1) / scale[:, None, None]
    D = torch.tensor([2 / W, 2 / H], device=x.device, dtype=M.dtype)     # pixels -> grid_sample's [-1, 1]
    t = torch.stack([tx, ty], 1)
    theta = torch.cat([D[None, :, None] * M / D[None, None, :], -(D[None, :, None] * (M @ t[:, :, None]))], 2)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    moved = (scale != 1) | (aniso != 1) | (tx != 0) | (ty != 0)
    return torch.where(moved[:, None, None, None], warped, x)


def inputs(images, p, xflip, labels):
    """A micro-batch for the loss: uint8 -> [-1, 1] -> augmented; with `labels`, every network
    call of soflow_loss gets the augmentation labels of its own images (net_kwargs)."""
    x0, aug = augment(images.float() / 127.5 - 1, p, xflip)
    return x0, None, {"augment_labels": aug} if labels else None


def main(argv=None):
    C = settings.configure(SETTINGS, PRESETS, unet.UNet, __doc__, __file__, argv, fixed=("img_resolution", "in_channels"))
    rank, world, _ = trainer.world()
    micro, accum = settings.accumulation(C, world)          # every setting is checked before any compute
    cfg = settings.method_config(C)
    if cfg.num_classes is not None:
        raise SystemExit(f"error: --method={C.method} is class-conditional; CIFAR-10 is trained unconditionally")
    try:
        with torch.device("meta"):
            probe = unet.UNet(img_resolution=32, in_channels=3, **C.net_args)
        if C.augment_p > 0 and probe.augment_dim != 6:
            raise ValueError(f"--augment_p > 0 needs the 6-dim augmentation label (--augment_dim=6), else the "
                             f"network learns to make scaled and shifted images")
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: the network: {e}") from None
    run = trainer.Run(C, rank, world)

    rank, world, device = trainer.setup(C.device)
    images = load_cifar10(C.data_dir, C.download, rank)
    if len(images) < C.batch_size:
        raise SystemExit(f"error: CIFAR-10 in {C.data_dir} holds {len(images)} images, fewer than one batch of "
                         f"--batch_size={C.batch_size}")
    images = images.to(device)
    torch.manual_seed(C.seed)                                 # the same initial weights in every process
    net = unet.UNet(img_resolution=32, in_channels=3, **C.net_args).to(device)
    ema = trainer.EMA(net, C.ema_decay, C.ema_every, C.ema_dtype)
    opt = trainer.make_optimizer(C, net, device)
    config = {"script": "train_cifar", "net": {"kind": "unet", **net.config}, "soflow": cfg.to_dict(),
              "data": {"kind": "pixels", "dataset": "cifar10", "image_size": 32, "num_classes": None,
                       "num_items": len(images)},
              "train": {k: getattr(C, k) for k in SETTINGS}}
    step = run.resume(config, net, ema, opt)
    if step == 0 and C.init_from:
        trainer.init_weights(net, ema, C.init_from)
    show = torch.randn(C.num_samples, 3, 32, 32, generator=torch.Generator().manual_seed(C.seed)).to(device)

    compiled = C.compile == "on" or (C.compile == "auto" and device.type == "cuda")
    if compiled and net.config["dropout"] > 0:
        # the consistency loss replays its gradient pass's dropout masks in the gradient-free
        # target pass (soflow.scm_loss): compiled graphs must draw exactly what eager draws
        torch._inductor.config.fallback_random = True
    model = trainer.Objective(torch.compile(net) if compiled else net, cfg,
                              functools.partial(inputs, p=C.augment_p, xflip=C.xflip, labels=bool(net.augment_dim)))
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                    broadcast_buffers=False, gradient_as_bucket_view=True)
    bf16 = C.precision == "bf16" or (C.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    flops = trainer.step_flops(unet.flops(net.config), cfg, micro, accum, world)
    peak = trainer.peak_tflops(device, C.peak_tflops)
    end = min(C.stop_at or C.steps, C.steps)
    if rank == 0:
        print(f"U-Net {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters | {len(images)} images | "
              f"batch {C.batch_size} = {micro} x {accum} accumulation x {world} processes | {device}"
              f"{', compiled' if compiled else ''}", flush=True)
    bar = tqdm(total=end, initial=step, disable=rank != 0 or not C.progress, dynamic_ncols=True)

    while step < end:                                         # the loop: one optimizer step each
        idx = torch.from_numpy(trainer.step_indices(len(images), C.batch_size, C.seed, step)).to(device)
        batch = [(images[idx[sl]],) for _, sl in trainer.micro_slices(C.batch_size, micro, rank, world)]
        logs = trainer.train_step(model, opt, ema, net, batch, step, C, rank, world, device, autocast)
        step += 1
        run.add(logs, step)
        bar.update()
        if step % C.log_every == 0 or step == end:
            row = run.log(step, flops, peak, epoch=f"{step / (len(images) // C.batch_size):.4f}",
                          r=f"{soflow.r_at(cfg, step):.6g}", lr=C.lr)
            bar.set_postfix(loss=row["loss"], img_s=row["img_per_s"])
        if (C.ckpt_every and step % C.ckpt_every == 0) or (C.keep_every and step % C.keep_every == 0) or step == end:
            run.save(step, config, net, ema, opt)
        if C.sample_every and (step % C.sample_every == 0 or step == end) and rank == 0:
            with run.paused(), torch.no_grad(), autocast:
                x = soflow.sample(ema.net, cfg, show.to(next(ema.net.parameters()).dtype))
                checkpoints.save_grid(os.path.join(C.out_dir, f"samples_{step:07d}.png"), checkpoints.to_uint8(x))
                trainer.plot_log(run.log_path, os.path.join(C.out_dir, "loss.png"))
    bar.close()
    return trainer.finish(net, step, run)


if __name__ == "__main__":
    main()
