"""
Train SoFlow on ImageNet 256x256, class-conditional, in the latent space of the SD-VAE,
with a DiT (the paper's Sec. 5 and App. A).

    # once: encode the training images into SD-VAE latents (posterior mean and std)
    torchrun --nproc_per_node=8 prepare_imagenet.py --data_dir /data/imagenet/train
    # the paper's DiT-XL/2 on one node of 8 GPUs (32 images per GPU, 256 per step)
    torchrun --nproc_per_node=8 train_imagenet.py --preset XL/2
    # the same run on 2 GPUs: 32 images per GPU, 4 accumulation micro-steps per step
    torchrun --nproc_per_node=2 train_imagenet.py --preset XL/2 --micro_batch 32
    # fine-tune from the authors' released XL/2 (a new run: step 0, a new optimizer)
    torchrun --nproc_per_node=8 train_imagenet.py --preset XL/2-released --init_from XL-2-cond
    python train_imagenet.py --list_presets      # the named settings
    python train_imagenet.py --help              # every setting, network argument and method field

The settings are the plain values below; --name value overrides one, and --preset NAME
applies a named set first. Any dit.DiT argument (--depth 2, --attn math) and any
soflow.SoFlowConfig field (--guidance_scale 2) may be given too; the data fix the
network's input size, channels and classes, and --steps is also K of r(k, K) (Eq. 16).

One optimizer step takes batch_size images: micro_batch on each of the world_size
processes, accumulated over batch_size / (micro_batch x world_size) micro-steps.
Outputs in out_dir: ckpt.pt (starting again with the same out_dir resumes it exactly),
ckpt_STEP.pt every keep_every steps, log.csv, loss.png, samples_STEP.png (EMA, 1 NFE).
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import checkpoints
import dit
import settings
import soflow
import trainer

# -----------------------------------------------------------------------------
preset = ""                        # named settings applied first (PRESETS below)
model = "B/4"                      # DiT configuration (dit.DIT_CONFIGS)
method = "imagenet"                # soflow.PRESETS entry: 'imagenet' (paper) or 'imagenet_released'
data = "data/imagenet256_latents"  # folder written by prepare_imagenet.py
out_dir = "out/imagenet"
init_from = ""                     # fine-tune: our checkpoint, a released file or configuration name
steps = 400_000                    # optimizer steps of the run; also K of r(k, K)
batch_size = 256                   # global batch: all processes, all micro-steps
micro_batch = 0                    # images per process per forward; 0 = batch_size / world size
optimizer = "adam"
lr = 1e-4                          # constant: no warm-up, no decay (App. A)
beta1 = 0.9
beta2 = 0.99
weight_decay = 0.0
grad_clip = 0.0                    # clip the gradient norm to this; 0 = never (the paper does not)
ema_decay = 0.9999
ema_every = 1                      # EMA update interval; each update applies ema_decay ** ema_every
ema_dtype = "float32"
seed = 0                           # the data order and every random draw
precision = "auto"                 # 'bf16' autocast, 'fp32', 'auto' = bf16 on CUDA, fp32 on the CPU
compile = "auto"                   # torch.compile the network: 'auto' = on CUDA only
device = "auto"
num_workers = 1                    # background processes reading the memory-mapped latents
log_every = 100                    # a log row (one host-device sync) every N steps
ckpt_every = 5000                  # a checkpoint every N steps and at the end; 0 = at the end only
keep_every = 0                     # also keep ckpt_STEP.pt every N steps; 0 = only the latest
sample_every = 10_000              # EMA sample grid and loss plot every N steps; 0 = never
num_samples = 32                   # images in the sample grid
vae = ""                           # the VAE decoding the grid; '' = the one that encoded the latents
stop_at = 0                        # stop (after a checkpoint) at this step, e.g. for a job's time limit
peak_tflops = 0.0                  # the accelerator's dense bf16 TFLOP/s for MFU; 0 = from its name
progress = True                    # a tqdm bar on rank 0
# -----------------------------------------------------------------------------
SETTINGS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))}

# The paper's runs (App. A, Table 4): batch 256, Adam (0.9, 0.99), lr 1e-4; B/4 for 400K steps
# (80 epochs), the others 1.2M (240 epochs). '-released': the authors' imagenet.yaml (its
# time means and r_end, AdamW without weight decay: the same update as Adam).
PRESETS = {}
for _name, _steps in (("B/4", 400_000), ("B/2", 1_200_000), ("M/2", 1_200_000), ("L/2", 1_200_000),
                      ("XL/2", 1_200_000)):
    PRESETS[_name] = dict(model=_name, method="imagenet", steps=_steps, batch_size=256, optimizer="adam", lr=1e-4,
                          beta1=0.9, beta2=0.99, weight_decay=0.0, ema_decay=0.9999)
    PRESETS[_name + "-released"] = dict(PRESETS[_name], method="imagenet_released", optimizer="adamw")


class Latents(torch.utils.data.Dataset):
    """The latents of prepare_imagenet.py: mean.npy and std.npy float32 (N, C, h, w)
    memory-mapped, labels.npy int64 (N,), meta.json. Item k is this process's micro-batches
    of step k: (mean, std, labels) each, the images fixed by (seed, step) alone."""

    def __init__(self, folder, C, micro, rank, world):
        self.C, self.micro, self.rank, self.world = C, micro, rank, world
        how = f"make it with: torchrun --nproc_per_node=8 prepare_imagenet.py --data_dir /path/to/train --out_dir {folder}"
        path = os.path.join(folder, "meta.json")
        if not os.path.isfile(path):
            raise SystemExit(f"error: no ImageNet latents in {folder!r} (meta.json, mean.npy, std.npy, labels.npy); {how}")
        try:
            self.meta = json.load(open(path))
            if not self.meta.get("complete"):
                raise ValueError("the encoding is not finished (complete: false); run the same command again, it resumes")
            arrays = {}
            for name in ("mean", "std", "labels"):
                path = os.path.join(folder, f"{name}.npy")
                arrays[name] = np.load(path, mmap_mode="r")
            self.shape, n = tuple(self.meta["latent_shape"]), len(arrays["labels"])
            for name, dtype, shape in (("mean", np.float32, (n, *self.shape)), ("std", np.float32, (n, *self.shape)),
                                       ("labels", np.int64, (self.meta["num_items"],))):
                path = os.path.join(folder, f"{name}.npy")
                if arrays[name].dtype != dtype or arrays[name].shape != shape:
                    raise ValueError(f"{arrays[name].dtype} {arrays[name].shape}, expected {np.dtype(dtype)} {shape}")
            self.num_classes = int(self.meta["num_classes"])
            if n and not 0 <= arrays["labels"].min() <= arrays["labels"].max() < self.num_classes:
                raise ValueError(f"labels outside [0, {self.num_classes})")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: malformed ImageNet latents: {path}: {e}. Delete the folder and encode "
                             f"again; {how}") from None
        self.mean, self.std, self.labels = arrays["mean"], arrays["std"], np.asarray(arrays["labels"])
        if n < C.batch_size:
            raise SystemExit(f"error: {folder} holds {n} latents, fewer than one batch of --batch_size={C.batch_size}")

    def __len__(self):
        return self.C.steps

    def __getitem__(self, step):
        idx = trainer.step_indices(len(self.labels), self.C.batch_size, self.C.seed, step)
        return [tuple(torch.from_numpy(np.ascontiguousarray(a[idx[sl]]))
                      for a in (self.mean, self.std, self.labels))
                for _, sl in trainer.micro_slices(self.C.batch_size, self.micro, self.rank, self.world)]


def inputs(mean, std, y):
    """A fresh latent each time an image is used, as the authors' train.py draws it:
    x0 = (mean + std * noise) * 0.18215."""
    return (mean + std * torch.randn_like(std)) * checkpoints.LATENT_SCALE, y, None


def main(argv=None):
    C = settings.configure(SETTINGS, PRESETS, dit.DiT, __doc__, __file__, argv,
                          fixed=("input_size", "in_channels", "num_classes"), choices={"model": tuple(dit.DIT_CONFIGS)},
                          describe=lambda v: "network: " + ", ".join(f"{k}={x}" for k, x in dit.DIT_CONFIGS[v["model"]].items()))
    rank, world, _ = trainer.world()
    micro, accum = settings.accumulation(C, world)          # every setting is checked before any compute
    cfg = settings.method_config(C)
    run = trainer.Run(C, rank, world)
    latents = Latents(C.data, C, micro, rank, world)
    cfg = settings.method_config(C, latents.num_classes)
    channels, size, _ = latents.shape
    net_args = dict(input_size=size, in_channels=channels, num_classes=latents.num_classes, **C.net_args)
    try:
        with torch.device("meta"):
            dit.dit_from_name(C.model, **net_args)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: the network: {e}") from None

    rank, world, device = trainer.setup(C.device)
    torch.manual_seed(C.seed)                                 # the same initial weights in every process
    net = dit.dit_from_name(C.model, **net_args).to(device)
    ema = trainer.EMA(net, C.ema_decay, C.ema_every, C.ema_dtype)
    opt = trainer.make_optimizer(C, net, device)
    config = {"script": "train_imagenet", "net": {"kind": "dit", **net.config}, "soflow": cfg.to_dict(),
              "data": {"kind": "latents", "vae": latents.meta["vae"], "latent_scale": checkpoints.LATENT_SCALE,
                       "image_size": latents.meta["image_size"], "num_classes": latents.num_classes,
                       "num_items": len(latents.labels), "latent_shape": list(latents.shape)},
              "train": {k: getattr(C, k) for k in SETTINGS}}
    step = run.resume(config, net, ema, opt)
    if step == 0 and C.init_from:
        trainer.init_weights(net, ema, C.init_from)
    vae = checkpoints.load_vae(C.vae or latents.meta["vae"], device) if C.sample_every and rank == 0 else None
    show = torch.randn(C.num_samples, *latents.shape, generator=torch.Generator().manual_seed(C.seed)).to(device)
    labels = torch.arange(C.num_samples, device=device) % latents.num_classes

    compiled = C.compile == "on" or (C.compile == "auto" and device.type == "cuda")
    model = trainer.Objective(trainer.compile_network(net) if compiled else net, cfg, inputs)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                    broadcast_buffers=False, gradient_as_bucket_view=True)
    bf16 = C.precision == "bf16" or (C.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    flops = trainer.step_flops(dit.flops(net.config), cfg, micro, accum, world)
    peak = trainer.peak_tflops(device, C.peak_tflops)
    end = min(C.stop_at or C.steps, C.steps)
    loader = torch.utils.data.DataLoader(latents, batch_size=None, sampler=range(step, end), pin_memory=device.type == "cuda",
                                         num_workers=C.num_workers, prefetch_factor=2 if C.num_workers else None)
    if rank == 0:
        print(f"DiT-{C.model} {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters | {len(latents.labels)} "
              f"latents {latents.shape}, {latents.num_classes} classes | batch {C.batch_size} = {micro} x {accum} "
              f"accumulation x {world} processes | {device}, {'bf16' if bf16 else 'fp32'}{', compiled' if compiled else ''}",
              flush=True)
    bar = tqdm(total=end, initial=step, disable=rank != 0 or not C.progress, dynamic_ncols=True)

    for batch in loader:                                      # the loop: one optimizer step per batch
        batch = [tuple(u.to(device, non_blocking=True) for u in mb) for mb in batch]
        logs = trainer.train_step(model, opt, ema, net, batch, step, C, rank, world, device, autocast)
        step += 1
        run.add(logs, step)
        bar.update()
        if step % C.log_every == 0 or step == end:
            row = run.log(step, flops, peak, epoch=f"{step / (len(latents.labels) // C.batch_size):.4f}",
                          r=f"{soflow.r_at(cfg, step):.6g}", lr=C.lr)
            bar.set_postfix(loss=row["loss"], img_s=row["img_per_s"])
        if (C.ckpt_every and step % C.ckpt_every == 0) or (C.keep_every and step % C.keep_every == 0) or step == end:
            run.save(step, config, net, ema, opt)
        if C.sample_every and (step % C.sample_every == 0 or step == end) and rank == 0:
            with run.paused(), torch.no_grad(), autocast:
                z = soflow.sample(ema.net, cfg, show.to(next(ema.net.parameters()).dtype), labels)
                images = torch.cat([vae.decode(u.float() / checkpoints.LATENT_SCALE).sample for u in z.split(16)])
                checkpoints.save_grid(os.path.join(C.out_dir, f"samples_{step:07d}.png"), checkpoints.to_uint8(images))
                trainer.plot_log(run.log_path, os.path.join(C.out_dir, "loss.png"))
    bar.close()
    return trainer.finish(net, step, run)


if __name__ == "__main__":
    main()
