"""
Generation: a SoFlow model turns noise into images in one network evaluation (or a few), written
as a PNG grid and as the .npz that fid.py evaluates.

    python sample.py XL-2-cond --classes 207,360,387,974  # a released model, fetched once from the hub
    python sample.py zlab-princeton/SoFlow/UNet-uncond --steps 2 --mode chain
    python sample.py path/to/SoFlow/B-4-cond              # a local copy: config.yaml, ckpts/STEPS.pt
    python sample.py out/digits/ckpt.pt --classes all     # ours (its config inside): a row per class
    python sample.py 1200000.pt --model XL/2              # a bare released file: name what it is
    torchrun --nproc_per_node=8 sample.py XL-2-cond --num_samples 50000 --batch_size 125 --out_dir out/xl2

Samplers (Sec. 4.3; soflow.py) from noise x1: 1 NFE, f(x1, 1, 0); N steps on 1 > t1 > ... > 0
(--steps N or --times 1,0.6,0), as released (--mode renoise: jump to data with f(x, t_i, 0),
re-noise to t_{i+1}) or deterministic (--mode chain: x <- f(x, t_i, t_{i+1})). Latents are
decoded by the SD-VAE. Image i's noise and random class come from (seed, i) alone: the same
images for any batch size and number of processes (each makes every W-th batch).

In --out_dir (default out/sample/SOURCE-WEIGHTS-nfeN[-MODE][-tTIMES][-CLASSES]-seedS): samples.npz
(uint8 (N, H, W, 3) under arr_0, labels under arr_1: the ADM format of fid.py), grid.png (the
first --grid images; with given classes, a row per class) and samples.json (settings, images/s).
"""

import argparse
import json
import os
import sys
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoints
import dit
import soflow
import trainer


def image_generator(seed, index, stream):   # stream 0: the image's noise, 1: its random class
    state = np.random.SeedSequence([seed, index, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))      # 63 bits


def image_noise(seed, indices, shape, renoise_steps=0):
    """(x1 (len(indices), *shape), [renoise_steps tensors of that shape]), float32 on the CPU."""
    draws = [[torch.randn(shape, generator=g) for _ in range(1 + renoise_steps)]
             for g in (image_generator(seed, i, 0) for i in indices)]
    x1, *renoise = [torch.stack(d) for d in zip(*draws)]
    return x1, renoise


def image_labels(seed, indices, classes, num_classes):
    """Labels (len(indices),): classes[i % len(classes)] of a list, uniform for 'random'; None for None."""
    if classes == "random":
        return torch.cat([torch.randint(num_classes, (1,), generator=image_generator(seed, i, 1)) for i in indices])
    return None if classes is None else torch.tensor([classes[i % len(classes)] for i in indices])


def rank_batches(n, batch, rank, world):    # global batch k holds images [k B, (k + 1) B), made by rank k mod W
    return [range(k * batch, min(n, (k + 1) * batch)) for k in range(rank, -(-n // batch), world)]


def write_npz(path, parts, n, batch, labels=None):
    """The images of the ranks' parts (their batches in order) under 'arr_0' in global order, streamed batch by batch
    into an uncompressed zip member (50,000 ImageNet images are 9.8 GB), the labels under 'arr_1'; atomic."""
    shape = (n, *parts[0].shape[1:])
    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            with z.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for k in range(-(-n // batch)):
                    start = (k // len(parts)) * batch
                    member.write(np.ascontiguousarray(parts[k % len(parts)][start:start + min(batch, n - k * batch)]))
            if labels is not None:
                with z.open("arr_1.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(labels, dtype=np.int64))
    checkpoints.atomic_write(path, write)
    return shape


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: p.exit(2, f"{p.prog}: error: {msg} (--help lists the options)\n")
    p.add_argument("source", help="a released configuration (XL-2-cond, zlab-princeton/SoFlow/UNet-uncond), "
                   "its folder, or a checkpoint file")
    p.add_argument("--model", choices=(*dit.DIT_CONFIGS, "unet"), help="what a bare released file is")
    p.add_argument("--net_args", type=json.loads, default={}, help="constructor arguments for --model, a JSON object")
    p.add_argument("--weights", default="ema", choices=("ema", "model"))
    p.add_argument("--steps", type=int, help="network evaluations on the uniform time grid (default 1)")
    p.add_argument("--times", help="the time grid instead, from 1 down to 0: 1,0.6,0")
    p.add_argument("--mode", default="renoise", choices=("renoise", "chain"), help="the multi-step sampler")
    p.add_argument("--classes", help="class-conditional models: random (the default), all (0, 1, ... in turn), null "
                   "(no class) or indices 207,360 (image i gets classes[i %% K])")
    p.add_argument("--num_samples", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64, help="images per network call and process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out_dir", help="output folder (default: out/sample/ and the settings)")
    p.add_argument("--grid", type=int, default=64, help="images in grid.png (0: none)")
    p.add_argument("--vae", help=f"SD-VAE hub id or folder (default: the model's, {checkpoints.DEFAULT_VAE})")
    p.add_argument("--vae_precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on CUDA")
    p.add_argument("--compile", default="off", choices=("auto", "on", "off"), help="torch.compile the network")
    a = p.parse_args(argv)
    for name, low in (("steps", 1), ("num_samples", 1), ("batch_size", 1), ("seed", 0), ("grid", 0)):
        if getattr(a, name) is not None and getattr(a, name) < low:
            p.error(f"--{name} {getattr(a, name)}: must be >= {low}")
    if not isinstance(a.net_args, dict):
        p.error(f"--net_args {a.net_args}: must be a JSON object like '{{\"num_classes\": 10}}'")
    if a.classes not in (None, "random", "all", "null") and not all(c.isdigit() for c in a.classes.split(",")):
        p.error(f"--classes {a.classes}: expected random, all, null or class indices like 207,360,387")
    try:
        a.grid_times = soflow.time_grid(a.steps or 1, a.times and [float(t) for t in a.times.split(",")])
    except ValueError as e:
        p.error(f"--times {a.times}: {e}")
    if a.times and a.steps and a.steps != len(a.grid_times) - 1:
        p.error(f"--steps {a.steps} but --times has {len(a.grid_times) - 1} steps")
    return a


def check_classes(text, cfg, net):
    """The classes to sample, checked before any compute: None (unconditional, or the null label), 'random' or a list."""
    if cfg.num_classes is None and text is not None:
        raise ValueError(f"--classes {text}: this model is unconditional; drop --classes")
    if text == "null" and not getattr(net, "null_label", True):
        raise ValueError("--classes null: this network has no null label (it was trained without label dropout)")
    if cfg.num_classes is None or text == "null":
        return None
    if text in (None, "random"):
        return "random"
    classes = list(range(cfg.num_classes)) if text == "all" else [int(c) for c in text.split(",")]
    if max(classes) >= cfg.num_classes:
        raise ValueError(f"--classes: class {max(classes)} is out of range for this model's {cfg.num_classes} classes")
    return classes


def out_name(a, path, classes):
    """SOURCE-WEIGHTS-nfeN[-MODE][-tTIMES][-CLASSES]-seedS: another seed or sampler, another folder."""
    p = Path(path)
    tags = [(p.parent.parent if p.parent.name == "ckpts" else p.parent).name + "-" + p.stem, a.weights,
            f"nfe{len(a.grid_times) - 1}"] + [a.mode] * (len(a.grid_times) > 2) + [f"t{a.times}"] * bool(a.times)
    if a.classes:
        tags.append(a.classes if len(a.classes) <= 40 else f"{len(classes)}classes{zlib.crc32(a.classes.encode()):08x}")
    return Path("out/sample") / "-".join(tags + [f"seed{a.seed}"])


def main(argv=None):
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")     # the hub's retries would bury the one-line errors
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
    rank, world, device = trainer.setup(a.device)
    try:        # a user's mistake is one line, before any compute
        path = checkpoints.resolve(a.source)
        net, cfg, data, desc = checkpoints.load_model(path, a.weights, a.model, a.net_args)
        classes, vae = check_classes(a.classes, cfg, net), None
        if data["kind"] == "latents":
            vae = checkpoints.load_vae(a.vae or data.get("vae") or checkpoints.DEFAULT_VAE, device,
                                       torch.bfloat16 if a.vae_precision == "bf16" else torch.float32)
            if vae.config.latent_channels != net.in_channels:
                raise ValueError(f"--vae: {vae.config.latent_channels} latent channels, the network takes {net.in_channels}")
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    out, times, nfe = Path(a.out_dir or out_name(a, path, classes)), a.grid_times, len(a.grid_times) - 1
    out.mkdir(parents=True, exist_ok=True)
    size = net.input_size if isinstance(net, dit.DiT) else net.img_resolution
    model = net.to(device)
    model = torch.compile(model) if a.compile == "on" or (a.compile == "auto" and device.type == "cuda") else model
    bf16 = a.precision == "bf16" or (a.precision == "auto" and device.type == "cuda")
    batches, part = rank_batches(a.num_samples, a.batch_size, rank, world), None
    part_path = lambda r: out / f".samples.rank{r}.npy"
    now = lambda: (device.type == "cuda" and torch.cuda.synchronize(device), time.perf_counter())[1]  # the GPU done
    if rank == 0:
        print(f"{desc}; {a.num_samples} images, {nfe} NFE" + f" ({a.mode}, times {times})" * (nfe > 1) + f", {world} "
              f"process(es), batch {a.batch_size}, {'bf16' if bf16 else 'fp32'} on {device} -> {out}", file=sys.stderr)

    seconds = []                        # per batch: (network, end to end)
    for b, idx in enumerate(tqdm(batches, unit="batch", desc=f"rank 0 of {world}", disable=rank != 0, file=sys.stderr)):
        t0 = now()
        x1, noise = image_noise(a.seed, idx, (net.in_channels, size, size), nfe - 1 if a.mode == "renoise" else 0)
        y = image_labels(a.seed, idx, classes, cfg.num_classes)
        x1, noise, y = x1.to(device), [e.to(device) for e in noise], None if y is None else y.to(device)
        t1 = now()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            x = (soflow.sample_chain(model, cfg, x1, y, times=times) if a.mode == "chain" else
                 soflow.sample_renoise(model, cfg, x1, y, times=times, noise=noise))       # 1 NFE: the same
        t2 = now()
        if vae is not None:             # the decoder's activations are large: 32 images at a time
            x = torch.cat([vae.decode(z.to(vae.dtype) / data.get("latent_scale", checkpoints.LATENT_SCALE)).sample
                           for z in x.float().split(32)])
        images = checkpoints.to_uint8(x).numpy()
        images = np.repeat(images, 3 // images.shape[-1], axis=-1)          # grayscale -> RGB, as fid.py reads
        if part is None:
            part = np.lib.format.open_memmap(part_path(rank), "w+", np.uint8, (sum(map(len, batches)), *images.shape[1:]))
        part[b * a.batch_size:b * a.batch_size + len(idx)] = images
        seconds.append((t2 - t1, now() - t0))
    if part is not None:
        part.flush()

    skip = 1 if len(batches) > 1 else 0     # images per second summed over the processes, without the warm-up batch
    rates = torch.tensor([sum(map(len, batches[skip:])) / max(sum(s[i] for s in seconds[skip:]), 1e-12) for i in (0, 1)],
                         dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(rates)
        dist.barrier()                  # every part file is complete
        dist.destroy_process_group()    # rank 0 merges alone
    if rank == 0:
        parts = [np.load(part_path(r), mmap_mode="r") for r in range(min(world, -(-a.num_samples // a.batch_size)))]
        labels = None if classes is None else image_labels(a.seed, range(a.num_samples), classes, cfg.num_classes)
        shape = write_npz(out / "samples.npz", parts, a.num_samples, a.batch_size, labels)
        if a.grid:                      # the first images; with K given classes, row c holds those of classes[c]
            k = len(classes) if isinstance(classes, list) else 1
            cols = max(1, min(a.grid, a.num_samples) // k)
            image = lambda i: parts[i // a.batch_size % world][i // a.batch_size // world * a.batch_size + i % a.batch_size]
            checkpoints.save_grid(out / "grid.png", np.stack([image(c + k * j) for c in range(k) for j in range(cols)
                                                              if c + k * j < a.num_samples]), nrow=cols if k > 1 else 8)
        parts = None                    # close the maps before the files go
        for r in range(world):
            part_path(r).unlink(missing_ok=True)
        (out / "samples.json").write_text(json.dumps(dict(
            vars(a), path=path, model=desc, nfe=nfe, classes=classes, processes=world, device=str(device),
            images_per_s_network=(rates := rates.tolist())[0], images_per_s_end_to_end=rates[1]), indent=1))
        print(f"network{' (latents)' * bool(vae)}: {rates[0]:.2f} images/s, end to end{' (with VAE decode)' * bool(vae)}: "
              f"{rates[1]:.2f} images/s{' (first batch excluded)' * skip}, {world} process(es)")
        print(f"wrote {out / 'samples.npz'} ({'x'.join(map(str, shape))})" + f" and {out / 'grid.png'}" * bool(a.grid))
    return out


if __name__ == "__main__":
    main()
