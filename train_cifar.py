"""
Train SoFlow in pixel space with the U-Net of unet.py: unconditional CIFAR-10 as in the paper (App. A, the
authors' cifar.yaml), the default, and small real datasets with labels and guidance (Sec. 4.3) on a laptop.

    torchrun --nproc_per_node=8 train_cifar.py --preset cifar10      # the paper's run, 8 GPUs x 128 images
    # the authors' released recipe on 2 GPUs: 128 per GPU, 4 accumulation micro-steps
    torchrun --nproc_per_node=2 train_cifar.py --preset cifar10_released --micro_batch 128
    torchrun --nproc_per_node=8 train_cifar.py --preset cifar10_guided   # CIFAR-10 with labels and guidance
    python train_cifar.py --preset digits     # a laptop: 8x8 digits guided and not, side by side (< 10 min)
    python train_cifar.py --preset mnist      # MNIST on a laptop's CPU (hours: see the README)
    python train_cifar.py --list_presets      # the named settings; --help: every setting, network argument, method field

Settings and outputs as train_imagenet.py's: the plain values below, --name value overrides, --preset NAME first;
any unet.UNet argument (--model_channels 64) and SoFlowConfig field (--p 0.5), in a preset too.

Data (--dataset), pixels to [-1, 1], the whole set on the device: torchvision's 'cifar10' (50,000 training
images, 3 x 32 x 32) and 'mnist' (60,000, 1 x 28 x 28: the U-Net halves 28 to 14 and 7) in --data_dir,
downloaded there if missing; scikit-learn's bundled 'digits' (1,797, 1 x 8 x 8, values 0..16). A
class-conditional method (--method=imagenet, the presets' but cifar10's) trains on the labels: the U-Net
takes num_classes from the data, the null label is index num_classes (label dropout as EDM's), targets
mix velocities with guidance (Eq. 19), baked in at training: --compare=True shows what it does (compare()).
"""

import functools
import math
import os
import sys

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
dataset = "cifar10"                # 'cifar10', 'mnist' (torchvision's) or 'digits' (scikit-learn's 8x8)
method = "cifar10"                 # soflow.PRESETS entry: 'cifar10' (paper), 'cifar10_released'; with labels 'imagenet'
data_dir = "data"                  # torchvision's root (holds cifar-10-batches-py/, MNIST/raw/)
download = True                    # download CIFAR-10 or MNIST into data_dir if it is not there
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
num_samples = 64                   # images in the sample grid (with labels: a row of num_samples // classes a class)
compare = False                    # first train without guidance into out_dir/no_guidance; compare.png, judge()
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
# Beyond the paper, unmeasured: labels, the CIFAR-10 time settings, ImageNet's label dropout and w = 3, m = 0.25
PIXELS = {k: v for k, v in soflow.PRESETS["cifar10"].to_dict().items() if k not in (*soflow.UNCONDITIONAL, "total_steps")}
PRESETS["cifar10_guided"] = dict(PRESETS["cifar10"], method="imagenet", **PIXELS)
# A laptop's CPU, by measurement on digits (BENCHMARKS.md); no augmentation (a mirrored digit is not a digit)
LAPTOP = dict(PIXELS, method="imagenet", optimizer="adam", beta2=0.99, ema_every=1, ema_dtype="float32", augment_p=0.0,
              xflip=0.0, num_samples=100, dropout=0.0, augment_dim=0, num_blocks=1, guidance_scale=2.0, guidance_mix=1.0,
              guidance_t_max=0.15)       # guidance at every t, or a mix m < 1, cost Frechet distance on digits
PRESETS["digits"] = dict(LAPTOP, dataset="digits", out_dir="out/digits", steps=1000, batch_size=64, lr=1e-3,
                         ema_decay=0.99, ckpt_every=500, sample_every=500, compare=True, model_channels=16,
                         channel_mult=(1, 2), attn_resolutions=(), noise_channels=16)
PRESETS["mnist"] = dict(LAPTOP, dataset="mnist", out_dir="out/mnist", steps=10_000, batch_size=128, lr=1e-3,
                        ema_decay=0.999, ckpt_every=1000, sample_every=2000, model_channels=32,
                        channel_mult=(1, 2, 2), attn_resolutions=(7,), noise_channels=32)
# resolution, channels, classes, largest pixel value[, torchvision's name, its folder in data_dir, how to get it]
DATASETS = {"digits": (8, 1, 10, 16),
            "mnist": (28, 1, 10, 255, "MNIST", os.path.join("MNIST", "raw"),
                      "gunzip the four files of https://ossci-datasets.s3.amazonaws.com/mnist/ into {folder}/"),
            "cifar10": (32, 3, 10, 255, "CIFAR-10", "cifar-10-batches-py",
                        "extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz in {root}/")}


def load_data(name, root, download, rank):
    """The training images, uint8 (N, C, R, R), and their labels, int64 (N,): scikit-learn's
    digits, or CIFAR-10 / MNIST through torchvision, or a message that says how to get them."""
    R, channels, K, _, *torchvision_data = DATASETS[name]
    if name == "digits":
        from sklearn.datasets import load_digits
        return torch.from_numpy((d := load_digits()).images.astype(np.uint8))[:, None], torch.from_numpy(d.target).long()
    import torchvision.datasets
    title, sub, by_hand = torchvision_data
    cls, folder = getattr(torchvision.datasets, title.replace("-", "")), os.path.join(root, sub)
    how = (f"get it on a machine with internet access (python -c \"import torchvision; torchvision.datasets.{cls.__name__}"
           f"('{root}', download=True)\") and copy {folder}/ here, or " + by_hand.format(root=root, folder=folder))
    if not os.path.isdir(folder):
        if not download:
            raise SystemExit(f"error: {title} is not in {folder}/ (--download=False); {how}")
        if rank == 0:
            try:
                cls(root=root, train=True, download=True)
            except Exception as e:           # offline, proxy, disk full: the same way out
                raise SystemExit(f"error: {title} is not in {folder}/ and could not be downloaded "
                                 f"({type(e).__name__}: {e}); {how}") from None
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    try:
        ds = cls(root=root, train=True, download=False)
        x, y = torch.as_tensor(np.asarray(ds.data)), torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
        x = x[..., None] if x.ndim == 3 else x                       # MNIST: (N, 28, 28)
        if x.dtype != torch.uint8 or x.shape[1:] != (R, R, channels) or y.shape != x.shape[:1] or not (
                (y >= 0) & (y < K)).all():
            raise ValueError(f"{x.dtype} {tuple(x.shape)}, {len(y)} labels: expected uint8 (N, {R}, {R}, "
                             f"{channels}), N labels in [0, {K})")
    except Exception as e:                   # any unreadable file: the same way out
        raise SystemExit(f"error: malformed {title} in {folder}/ ({type(e).__name__}: {e}); delete the folder; "
                         f"{how}") from None
    return x.permute(0, 3, 1, 2).contiguous(), y


def augment(x, p=0.12, xflip=0.5):
    """Images x (N, C, H, W) in [-1, 1] augmented by the authors' recipe (after EDM's pipeline), and their
    labels (N, 6). Each image is flipped horizontally with probability `xflip`, and with probability `p` each of
    three geometric transforms is drawn: isotropic scaling by 2^(0.2 w), anisotropic scaling by 2^(0.2 w) along
    a direction (rotated by an angle uniform in [-pi, pi) in half of the cases) and 1 / 2^(0.2 w) across it, and
    a translation by 0.125 x size x (w_x, w_y), all w ~ N(0, 1), applied as one bilinear resampling with
    mirrored borders (EDM has more transforms and resamples on a wavelet-filtered 2x grid; these four are the
    recipe's). The network sees what was done through its 6-dim augmentation label, in EDM's order, [flip,
    w_scale, w_aniso cos r, w_aniso sin r, w_x, w_y] (0 where not drawn), so that sampling with no label asks
    for un-augmented images."""
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
    (H, W), c, s = x.shape[2:], angle.cos(), angle.sin()
    # output pixel p reads the input at S^-1 A^-1 (p - t), A^-1 = R(-angle) diag(1/aniso, aniso) R(angle)
    a11, a12, a22 = c * c / aniso + s * s * aniso, c * s * (aniso - 1 / aniso), s * s / aniso + c * c * aniso
    # in grid_sample's [-1, 1] coordinates, u = D p with D = diag(2 / W, 2 / H): D M D^-1 and D t
    M = torch.stack([torch.stack([a11, a12 * H / W], 1), torch.stack([a12 * W / H, a22], 1)], 1) / scale[:, None, None]
    t = torch.stack([tx * 2 / W, ty * 2 / H], 1)
    theta = torch.cat([M, -(M @ t[:, :, None])], 2)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    moved = (scale != 1) | (aniso != 1) | (tx != 0) | (ty != 0)
    return torch.where(moved[:, None, None, None], warped, x)


def inputs(images, y, vmax, p, xflip, augment_labels, labelled):
    """A micro-batch for soflow_loss: uint8 -> [-1, 1], augmented; the labels if `labelled`; augment_labels if asked."""
    x0, aug = augment(images.float() / (vmax / 2) - 1, p, xflip)
    return x0, y if labelled else None, {"augment_labels": aug} if augment_labels else None


@torch.no_grad()
def judge(net, cfg, images, labels, per_class=200, seed=0):
    """(class accuracy, Frechet distance, within-class spread) of 1-NFE samples, per_class of each class
    from the noise of `seed`: the share that a logistic-regression classifier fitted on the real images
    puts in their class; in the real images' 20-dim PCA space, the Frechet distance (fid.frechet_distance)
    to the real images, and the samples' mean per-class variance over the real images' (1 = as varied as
    the data: guidance pulls each class towards its mode). images: (N, C, R, R) in [-1, 1], labels (N,)."""
    import fid
    from sklearn import decomposition, linear_model
    real, labels = images.flatten(1).double().cpu().numpy(), labels.cpu().numpy()
    y = torch.arange(cfg.num_classes).repeat_interleave(per_class)
    x1 = torch.randn(len(y), *images.shape[1:], generator=torch.Generator().manual_seed(seed))
    p = next(net.parameters())
    fake = soflow.sample(net, cfg, x1.to(p), y.to(p.device)).float().clamp(-1, 1).flatten(1).double().cpu().numpy()
    accuracy = (linear_model.LogisticRegression(max_iter=1000).fit(real, labels).predict(fake) == y.numpy()).mean()
    a, b = (pca := decomposition.PCA(20).fit(real)).transform(real), pca.transform(fake)
    spread = lambda z, l: np.mean([z[l == c].var(0, ddof=1).sum() for c in range(cfg.num_classes)])
    return (float(accuracy), fid.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)),
            float(spread(b, y.numpy()) / spread(a, labels)))


def compare(net, cfg, out_dir, noise, y, images, labels):
    """--compare=True: this run (guided) follows the same run unguided in out_dir/no_guidance. compare.png, a row
    per class: this run's 1-NFE samples, a gap, that run's from the same noise; both runs' judge() figures, printed."""
    other, other_cfg = checkpoints.load_model(os.path.join(out_dir, "no_guidance", "ckpt.pt"))[:2]
    runs = (("guidance", net, cfg), ("no guidance", other.to(noise.device), other_cfg))
    a, b = (soflow.sample(m, c, noise.to(next(m.parameters()).dtype), y).float() for _, m, c in runs)
    per = len(y) // cfg.num_classes
    rows = [torch.cat([a[i:i + per], torch.zeros_like(a[:1]), b[i:i + per]]) for i in range(0, len(y), per)]
    checkpoints.save_grid(os.path.join(out_dir, "compare.png"), checkpoints.to_uint8(torch.cat(rows)), nrow=2 * per + 1)
    for title, m, c in runs:
        print("{} (w = {:g}, m = {:g}), 1 NFE: class accuracy {:.3f}, Frechet distance (PCA-20) {:.3f}, "
              "within-class spread {:.2f} of the real images'".format(
            title, c.guidance_scale, c.guidance_mix, *judge(m, c, images, labels)), flush=True)


def main(argv=None):
    C = settings.configure(SETTINGS, PRESETS, unet.UNet, __doc__, __file__, argv, choices={"dataset": tuple(DATASETS)},
                           fixed=("img_resolution", "in_channels", "num_classes"))
    rank, world, _ = trainer.world()
    micro, accum = settings.accumulation(C, world)          # every setting is checked before any compute
    R, channels, K, vmax = DATASETS[C.dataset][:4]
    cfg = settings.method_config(C, K)
    labelled = cfg.num_classes is not None
    if C.compare and not cfg.guided:
        raise SystemExit(f"error: --compare=True compares a guided run with the same run unguided, but --method="
                         f"{C.method} trains without guidance: use --method=imagenet with --guidance_scale > 1")
    if C.xflip and C.dataset != "cifar10":
        raise SystemExit(f"error: --xflip={C.xflip}: a mirrored digit is not a digit; use --xflip=0 on {C.dataset}")
    net_args = dict(img_resolution=R, in_channels=channels, num_classes=K if labelled else 0, **C.net_args)
    try:
        with torch.device("meta"):
            probe = unet.UNet(**net_args)
        if C.augment_p > 0 and probe.augment_dim != 6:
            raise ValueError("--augment_p > 0 needs the 6-dim augmentation label (--augment_dim=6): else it learns shifts")
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: the network: {e}") from None
    run = trainer.Run(C, rank, world)             # checks out_dir before any compute
    if C.compare:                                 # the same run without guidance first, then this run's clock
        main([*(sys.argv[1:] if argv is None else argv), f"--out_dir={os.path.join(C.out_dir, 'no_guidance')}",
              "--guidance_scale=1", "--guidance_mix=1", "--compare=False"])
        run = trainer.Run(C, rank, world)

    rank, world, device = trainer.setup(C.device)
    images, labels = (u.to(device) for u in load_data(C.dataset, C.data_dir, C.download, rank))
    if len(images) < C.batch_size:
        raise SystemExit(f"error: {C.dataset} holds {len(images)} images, fewer than --batch_size={C.batch_size}")
    torch.manual_seed(C.seed)                                 # the same initial weights in every process
    net = unet.UNet(**net_args).to(device)
    ema = trainer.EMA(net, C.ema_decay, C.ema_every, C.ema_dtype)
    opt = trainer.make_optimizer(C, net, device)
    config = {"script": "train_cifar", "net": {"kind": "unet", **net.config}, "soflow": cfg.to_dict(),
              "data": {"kind": "pixels", "dataset": C.dataset, "image_size": R, "channels": channels,
                       "num_classes": K if labelled else None, "num_items": len(images)},
              "train": {k: getattr(C, k) for k in SETTINGS}}
    step = run.resume(config, net, ema, opt)
    if step == 0 and C.init_from:
        trainer.init_weights(net, ema, C.init_from)
    per = max(1, C.num_samples // K) if labelled else 8                     # the grid: a row per class, or 8
    show_y = torch.arange(K, device=device).repeat_interleave(per) if labelled else None
    show = torch.randn(per * K if labelled else C.num_samples, channels, R, R,
                       generator=torch.Generator().manual_seed(C.seed)).to(device)

    compiled = C.compile == "on" or (C.compile == "auto" and device.type == "cuda")
    # the consistency loss replays its gradient pass's dropout masks in the gradient-free target pass
    # (soflow.scm_loss): compiled graphs must draw exactly what eager draws
    torch._inductor.config.fallback_random |= compiled and net.config["dropout"] > 0
    model = trainer.Objective(trainer.compile_network(net) if compiled else net, cfg,
                              functools.partial(inputs, vmax=vmax, p=C.augment_p, xflip=C.xflip,
                                                augment_labels=bool(net.augment_dim), labelled=labelled))
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                    broadcast_buffers=False, gradient_as_bucket_view=True)
    bf16 = C.precision == "bf16" or (C.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    flops = trainer.step_flops(unet.flops(net.config), cfg, micro, accum, world)
    peak = trainer.peak_tflops(device, C.peak_tflops)
    end = min(C.stop_at or C.steps, C.steps)
    if rank == 0:
        print(f"U-Net {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters | {len(images)} {C.dataset} "
              f"images {channels}x{R}x{R}, {f'{K} classes' if labelled else 'unconditional'} | batch {C.batch_size} = "
              f"{micro} x {accum} accumulation x {world} processes | {device}{', compiled' if compiled else ''}", flush=True)
    bar = tqdm(total=end, initial=step, disable=rank != 0 or not C.progress, dynamic_ncols=True)

    per_epoch, order = len(images) // C.batch_size, None
    while step < end:                                         # the loop: one optimizer step each
        if order is None or step % per_epoch == 0:            # an epoch's batches (one batch of trainer.step_indices)
            order = torch.from_numpy(trainer.step_indices(len(images), per_epoch * C.batch_size, C.seed,
                                                          step // per_epoch)).to(device)   # one copy an epoch
        idx = order[step % per_epoch * C.batch_size:][:C.batch_size]
        batch = [(images[idx[sl]], labels[idx[sl]]) for _, sl in trainer.micro_slices(C.batch_size, micro, rank, world)]
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
                x = soflow.sample(ema.net, cfg, show.to(next(ema.net.parameters()).dtype), show_y)
                checkpoints.save_grid(os.path.join(C.out_dir, f"samples_{step:07d}.png"), checkpoints.to_uint8(x), per)
                trainer.plot_log(run.log_path, os.path.join(C.out_dir, "loss.png"))
    bar.close()
    if C.compare and rank == 0:
        with torch.no_grad(), autocast:
            compare(ema.net, cfg, C.out_dir, show, show_y, images.float() / (vmax / 2) - 1, labels)
    return trainer.finish(net, step, run)


if __name__ == "__main__":
    main()
