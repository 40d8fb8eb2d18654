"""
Generation: a trained SoFlow model turns noise into images in one network evaluation
(or a few), written as a PNG grid and as the .npz that fid.py evaluates.

    # a project checkpoint (train_imagenet.py / train_cifar.py): the config is inside
    python sample.py out/imagenet_b2/ckpt.pt --classes=207,360,387,974,88,979,417,279
    # the authors' released checkpoints: name the configuration they were trained with
    python sample.py SoFlow_XL_2.pt --released --model=XL/2 --num-samples=64
    python sample.py SoFlow_cifar10.pt --released --model=unet --steps=2
    # FID-50K: 50,000 images across 8 GPUs, then fid.py
    torchrun --nproc_per_node=8 sample.py SoFlow_XL_2.pt --released --model=XL/2 \\
        --num-samples=50000 --batch-size=250 --out=out/xl2_nfe1
    python fid.py out/xl2_nfe1/samples.npz --ref VIRTUAL_imagenet256_labeled.npz

Sampling (SPEC section 6; the samplers live in soflow.py):
  - 1 NFE: x0 = f(x1, 1, 0), x1 ~ N(0, I)                                 soflow.sample
  - N steps as released (--mode=renoise): at each t_i jump to data with f(x, t_i, 0),
    re-noise to t_{i+1} with fresh noise; the last jump is the image     soflow.sample_renoise
  - N steps, deterministic (--mode=chain): x <- f(x, t_i, t_{i+1})       soflow.sample_chain
ImageNet models work on SD-VAE latents: the output is divided by the latent scale
(0.18215) and decoded by the VAE's decoder. CIFAR-10 models work on pixels in [-1, 1].

Every image's noise (and its random class) is derived from (seed, its global index)
alone, so the same seed gives the same images whatever the batch size and the number
of processes (up to floating-point differences between batch shapes and devices).

Outputs, under --out: samples.npz (uint8 images (N, H, W, 3) under 'arr_0', the ADM
evaluation-suite format that fid.py reads, and the labels under 'arr_1' for class-
conditional samples), grid.png (the first --grid images) and samples.json (the
settings and the measured images per second).
"""

import argparse
import json
import math
import os
import pickle
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoints
import dit
import soflow
import unet

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"   # the SD-VAE of the ImageNet experiments (SPEC section 7)
LATENT_SCALE = 0.18215                      # latents = scale * VAE posterior sample
MODES = ("renoise", "chain")                # multi-step samplers: as released, deterministic
RELEASED_PRESETS = {"dit": "imagenet_released", "unet": "cifar10_released"}
MODEL_NAMES = (*dit.DIT_CONFIGS, "unet")


def log(msg):
    print(msg, file=sys.stderr, flush=True)

# -----------------------------------------------------------------------------
# Checkpoints. Two layouts (COMMON: the project format; SPEC section 9: released):
#   project:  {'model', 'ema', 'optimizer', 'step', 'config': {'net', 'soflow', 'data', ...}}
#   released: {'model', 'ema_model', 'optimizer', 'finished_steps', 'finished_epochs'},
#             state dicts under the prefix 'network.', no config (the user names it).

def load_model(path, weights="ema", released=None, model=None, net_args=None, random_init=False):
    """(net, cfg, data, description); see checkpoints.load_model. random_init: no checkpoint,
    the named configuration freshly initialised (throughput)."""
    if random_init:
        net, cfg, data = checkpoints.build_released(model, net_args)
        return net.eval().requires_grad_(False), cfg, data, f"randomly initialised {model}"
    return checkpoints.load_model(path, weights, model, net_args)

# -----------------------------------------------------------------------------
# Noise and labels, per image. Image i of a run with seed S draws its starting noise
# (and, in renoise mode, the fresh noise of every re-noising step, in order) from a
# generator seeded by (S, i, 0), and its random class from one seeded by (S, i, 1):
# nothing depends on which process or which batch makes it, and an image keeps its
# noise whether its class is given or random and whatever the number of steps.

def image_generator(seed, index, stream):
    state = np.random.SeedSequence([seed, index, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))      # 63 bits


def image_noise(seed, indices, shape, renoise_steps=0):
    """(x1, renoise): x1 (len(indices), *shape) and a list of renoise_steps tensors of the
    same shape, float32 on the CPU."""
    x1, extra = [], [[] for _ in range(renoise_steps)]
    for i in indices:
        g = image_generator(seed, i, 0)
        x1.append(torch.randn(shape, generator=g))
        for e in extra:
            e.append(torch.randn(shape, generator=g))
    return torch.stack(x1), [torch.stack(e) for e in extra]


def image_labels(seed, indices, classes, num_classes):
    """Labels (len(indices),) int64: classes[i % len(classes)] for given classes,
    uniform in [0, num_classes) for classes == 'random', None for the null label."""
    if classes is None:
        return None
    if classes == "random":
        return torch.cat([torch.randint(num_classes, (1,), generator=image_generator(seed, i, 1))
                          for i in indices])
    return torch.tensor([classes[i % len(classes)] for i in indices], dtype=torch.long)

# -----------------------------------------------------------------------------
# Generation.

@torch.no_grad()
def generate(net, cfg, x1, y=None, times=(1.0, 0.0), mode="renoise", noise=None):
    """The model's output (latents or pixels) from the noise x1 along `times`
    (1 = t0 > ... > tN = 0): one network evaluation per step."""
    times = soflow.time_grid(times=times)
    if len(times) == 2:
        return soflow.sample(net, cfg, x1, y)
    if mode == "chain":
        return soflow.sample_chain(net, cfg, x1, y, times=times)
    return soflow.sample_renoise(net, cfg, x1, y, times=times, noise=noise)   # noise drawn per image


def load_vae(path, device, dtype=torch.float32):
    """The SD-VAE (diffusers AutoencoderKL) from a Hub id or a local folder
    (save_pretrained layout). Fails with the way out when it cannot be had."""
    local = Path(path).expanduser()
    if not local.is_dir() and (str(path).startswith(("/", ".", "~")) or str(path).count("/") != 1):
        raise FileNotFoundError(f"VAE folder {path} does not exist (expected a diffusers AutoencoderKL folder "
                                f"or a Hub id such as {DEFAULT_VAE})")
    from diffusers import AutoencoderKL          # imported here: only latent models need it
    try:
        vae = AutoencoderKL.from_pretrained(str(local) if local.is_dir() else path, torch_dtype=dtype,
                                            low_cpu_mem_usage=False)
    except Exception as e:
        raise FileNotFoundError(
            f"could not load the VAE {path!r} ({type(e).__name__}: {e}).\nOn a machine with internet: "
            f"python -c \"from diffusers import AutoencoderKL; AutoencoderKL.from_pretrained('{DEFAULT_VAE}')"
            f".save_pretrained('sd-vae-ft-mse')\"\nthen copy the folder here and pass --vae=sd-vae-ft-mse") from e
    return vae.eval().requires_grad_(False).to(device)


@torch.no_grad()
def decode(vae, z, latent_scale=LATENT_SCALE, batch=32):
    """Latents -> images in [-1, 1], float32 (the decoder's activations at 256 x 256 are
    large: at most `batch` images at a time)."""
    dtype = next(vae.parameters()).dtype
    out = [vae.decode(c.to(dtype) / latent_scale).sample.float() for c in z.split(batch)]
    return torch.cat(out)


def to_uint8(x):
    """Images in [-1, 1] (N, C, H, W) -> uint8 (N, H, W, C), rounded to the nearest level."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

# -----------------------------------------------------------------------------
# Work split and output files. Global batch k holds images [k B, (k + 1) B) and goes to
# rank k mod W; each rank fills a memory-mapped .npy with its batches in order, and
# rank 0 streams them, in global order, into one .npz (50,000 ImageNet images are
# 9.8 GB: never all in memory).

def rank_batches(n, batch, rank, world):
    return [range(k * batch, min(n, (k + 1) * batch)) for k in range(rank, -(-n // batch), world)]


def part_path(out, rank):
    return Path(out) / f".samples.rank{rank}.npy"


def global_chunks(parts, n, batch):
    """The images of all ranks in global order, one batch at a time."""
    world = len(parts)
    for k in range(-(-n // batch)):
        start = (k // world) * batch
        yield parts[k % world][start:start + min(batch, n - k * batch)]


def write_npz(path, chunks, shape, labels=None):
    """An .npz with the uint8 images (shape (N, H, W, 3)) under 'arr_0', written chunk by
    chunk into an uncompressed zip member, plus the labels under 'arr_1'; atomic."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
            written = 0
            for c in chunks:
                f.write(np.ascontiguousarray(c, dtype=np.uint8).tobytes())
                written += len(c)
            assert written == shape[0], f"wrote {written} images, expected {shape[0]}"
        if labels is not None:
            with z.open("arr_1.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    os.replace(tmp, path)


def save_grid(path, images, nrow):
    """uint8 images (N, H, W, 3) -> one PNG, nrow images per row, 2-pixel black borders."""
    from PIL import Image
    from torchvision.utils import make_grid
    grid = make_grid(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), nrow=nrow, padding=2)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}.png")
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp)
    os.replace(tmp, path)

# -----------------------------------------------------------------------------
# Command line.

def parse_classes(text):
    if text in ("random", "null"):
        return text
    try:
        classes = [int(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"--classes={text}: expected 'random', 'null' or comma-separated class indices "
                         "like 207,360,387") from None
    if any(c < 0 for c in classes):
        raise ValueError(f"--classes={text}: class indices must be >= 0")
    return classes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Sample from a SoFlow checkpoint: a PNG grid and an .npz for fid.py.")
    p.add_argument("checkpoint", nargs="?", help="a project checkpoint (train_*.py) or a released one")
    p.add_argument("--released", action="store_true",
                   help="the checkpoint is a released one (detected anyway); needs --model")
    p.add_argument("--model", help=f"configuration of a released checkpoint: {', '.join(MODEL_NAMES)}")
    p.add_argument("--net-args", default=None, metavar="JSON",
                   help="constructor overrides for --model, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--random-weights", action="store_true",
                   help="no checkpoint: a freshly initialised --model (to measure throughput)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="(default: ema)")
    p.add_argument("--steps", type=int, default=None, help="network evaluations, on a uniform time grid (default 1)")
    p.add_argument("--times", default=None, help="the time grid instead, e.g. 1,0.5,0 (from 1 down to 0)")
    p.add_argument("--mode", default="renoise", help=f"multi-step sampler: {' | '.join(MODES)} (default renoise, "
                                                     "as released; chain is deterministic)")
    p.add_argument("--classes", default=None,
                   help="class-conditional models: comma-separated indices (image i gets classes[i %% K]), "
                        "'random' (uniform; the default) or 'null' (the null label, no class)")
    p.add_argument("--num-samples", type=int, default=64, help="images in all (default 64; 50000 for FID-50K)")
    p.add_argument("--batch-size", type=int, default=64, help="images per network call and process (default 64)")
    p.add_argument("--seed", type=int, default=0, help="image i depends only on (seed, i) (default 0)")
    p.add_argument("--out", default=None, help="output folder (default out/sample/<checkpoint>-<weights>-nfe<N>)")
    p.add_argument("--grid", type=int, default=64, help="images in grid.png (default 64)")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row (default: one column per given "
                                                          "class, else 8)")
    p.add_argument("--vae", default=None, help=f"SD-VAE Hub id or local folder (default: the checkpoint's, "
                                               f"else {DEFAULT_VAE})")
    p.add_argument("--vae-precision", default="fp32", choices=("fp32", "bf16"), help="VAE decoder (default fp32)")
    p.add_argument("--decode-batch", type=int, default=32, help="images per VAE decode call (default 32)")
    p.add_argument("--device", default=None, help="(default: cuda if available, else cpu)")
    p.add_argument("--precision", default=None, choices=("bf16", "fp32"),
                   help="network autocast (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    args = p.parse_args(argv)

    # every argument is checked here, before the checkpoint is read and before any compute
    try:
        if args.model is not None and args.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {args.model!r}: choose from {', '.join(MODEL_NAMES)}")
        if args.random_weights:
            if args.model is None or args.checkpoint is not None:
                raise ValueError("--random-weights takes --model and no checkpoint")
        elif args.checkpoint is None:
            raise ValueError("give a checkpoint (or --random-weights --model=NAME)")
        elif not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
        if args.released and args.model is None:
            raise ValueError("--released: name the checkpoint's configuration with --model "
                             f"({', '.join(MODEL_NAMES)})")
        try:
            args.net_args = json.loads(args.net_args) if args.net_args else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"--net-args={args.net_args}: not valid JSON ({e})") from None
        if not isinstance(args.net_args, dict):
            raise ValueError("--net-args must be a JSON object, e.g. '{\"num_classes\": 10}'")
        if args.mode not in MODES:
            raise ValueError(f"--mode={args.mode}: choose from {', '.join(MODES)}")
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps={args.steps}: must be >= 1")
        if args.times is not None:
            try:
                times = [float(t) for t in args.times.split(",")]
            except ValueError:
                raise ValueError(f"--times={args.times}: expected comma-separated numbers like 1,0.5,0") from None
            soflow.time_grid(times=times)
            if args.steps is not None and args.steps != len(times) - 1:
                raise ValueError(f"--steps={args.steps} but --times has {len(times) - 1} steps")
        else:
            times = torch.linspace(1, 0, (args.steps or 1) + 1).tolist()   # soflow's default grid
        args.times = times
        args.steps = len(times) - 1
        if args.classes is not None:
            args.classes = parse_classes(args.classes)
        for name in ("num_samples", "batch_size", "decode_batch"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
        if args.grid < 0 or (args.nrow is not None and args.nrow < 1):
            raise ValueError("--grid must be >= 0 and --nrow >= 1")
        if args.seed < 0:
            raise ValueError(f"--seed={args.seed}: must be >= 0")
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    return args


def check_classes(classes, cfg):
    """Class arguments against the model: before any compute."""
    if cfg.num_classes is None:
        if classes is not None:
            raise ValueError(f"--classes={classes}: this model is unconditional (num_classes=None); "
                             "drop --classes")
        return None
    if classes is None:
        return "random"
    if isinstance(classes, list) and max(classes) >= cfg.num_classes:
        raise ValueError(f"--classes: class {max(classes)} is out of range for this model's "
                         f"{cfg.num_classes} classes (0 .. {cfg.num_classes - 1})")
    return None if classes == "null" else classes


def now(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main(argv=None):
    args = parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")     # TF32 for the fp32 VAE decoder
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")

    # Load and check everything before any compute.
    net, cfg, data, desc = load_model(args.checkpoint, args.weights, released=args.released or None,
                                      model=args.model, net_args=args.net_args, random_init=args.random_weights)
    classes = check_classes(args.classes, cfg)
    latents = data["kind"] == "latents"
    vae = None
    if latents:
        vae = load_vae(args.vae or data.get("vae") or DEFAULT_VAE, device,
                       torch.bfloat16 if args.vae_precision == "bf16" else torch.float32)
        if vae.config.latent_channels != net.in_channels:
            raise ValueError(f"the VAE has {vae.config.latent_channels} latent channels, the network "
                             f"{net.in_channels}")
    size = net.input_size if isinstance(net, dit.DiT) else net.img_resolution
    shape = (net.in_channels, size, size)
    stem = Path(args.checkpoint).stem if args.checkpoint else args.model.replace("/", "")
    out = Path(args.out or f"out/sample/{stem}-{args.weights}-nfe{args.steps}"
               + (f"-{args.mode}" if args.steps > 1 else ""))
    out.mkdir(parents=True, exist_ok=True)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    net = net.to(device)
    model = torch.compile(net) if args.compile else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    renoise_steps = args.steps - 1 if args.mode == "renoise" else 0
    batches = rank_batches(args.num_samples, args.batch_size, rank, world)
    n_mine = sum(len(b) for b in batches)
    if rank == 0:
        log(f"{desc}; {args.num_samples} images, {args.steps} NFE"
            + (f" ({args.mode}, times {[round(t, 4) for t in args.times]})" if args.steps > 1 else "")
            + f", {world} process(es), batch {args.batch_size}, {precision} on {device}")

    # Generate this rank's batches into a memory-mapped part file.
    part = None
    net_time, total_time, timed = [], [], []
    with tqdm(total=n_mine, unit="img", desc=f"sampling (rank 0 of {world})", disable=rank != 0,
              file=sys.stderr) as bar:
        pos = 0
        for idx in batches:
            t0 = now(device)
            x1, noise = image_noise(args.seed, idx, shape, renoise_steps)
            y = image_labels(args.seed, idx, classes, cfg.num_classes)
            x1 = x1.to(device, non_blocking=True)
            noise = [e.to(device, non_blocking=True) for e in noise]
            y = None if y is None else y.to(device)
            t1 = now(device)
            with autocast:
                x = generate(model, cfg, x1, y, args.times, args.mode, noise)
            t2 = now(device)
            if latents:
                x = decode(vae, x.float(), data.get("latent_scale", LATENT_SCALE), args.decode_batch)
            images = to_uint8(x).cpu().numpy()
            if part is None:
                part = np.lib.format.open_memmap(part_path(out, rank), mode="w+", dtype=np.uint8,
                                                 shape=(n_mine, *images.shape[1:]))
            part[pos:pos + len(idx)] = images
            pos += len(idx)
            net_time.append(t2 - t1)
            total_time.append(now(device) - t0)
            timed.append(len(idx))
            bar.update(len(idx))
    if part is not None:
        part.flush()

    # Throughput: images per second over all processes, without the first batch (warm-up:
    # kernel selection, compilation) when there is more than one.
    skip = 1 if len(timed) > 1 else 0
    rates = torch.tensor([sum(timed[skip:]) / max(sum(net_time[skip:]), 1e-12),
                          sum(timed[skip:]) / max(sum(total_time[skip:]), 1e-12)], dtype=torch.float64)
    if world > 1:
        rates = rates.to(device)           # NCCL reduces CUDA tensors only
        dist.all_reduce(rates)             # sum of the processes' rates
        rates = rates.cpu()
        dist.barrier()                     # every part file is complete
        dist.destroy_process_group()       # rank 0 merges alone (minutes for 50,000 ImageNet images)
    if rank == 0:
        # ranks beyond the number of batches made nothing and wrote no part
        parts = [np.load(part_path(out, r), mmap_mode="r")
                 if rank_batches(args.num_samples, args.batch_size, r, world) else None for r in range(world)]
        img_shape = parts[0].shape[1:]
        labels = None
        if classes is not None:
            labels = torch.cat([image_labels(args.seed, range(i, min(i + 4096, args.num_samples)), classes,
                                             cfg.num_classes) for i in range(0, args.num_samples, 4096)]).numpy()
        write_npz(out / "samples.npz", global_chunks(parts, args.num_samples, args.batch_size),
                  (args.num_samples, *img_shape), labels)
        if args.grid:
            first = np.concatenate(list(global_chunks(parts, min(args.grid, args.num_samples), args.batch_size)))
            nrow = args.nrow or (len(classes) if isinstance(classes, list) and len(classes) <= 16 else 8)
            save_grid(out / "grid.png", first, nrow)
        for r in range(world):
            if parts[r] is not None:
                parts[r] = None                # close the map before the file goes
                part_path(out, r).unlink()
        report = {"checkpoint": args.checkpoint, "weights": args.weights, "model": desc, "nfe": args.steps,
                  "times": args.times, "mode": args.mode if args.steps > 1 else None, "seed": args.seed,
                  "classes": classes, "num_samples": args.num_samples, "batch_size": args.batch_size,
                  "processes": world, "device": str(device), "precision": precision, "compile": args.compile,
                  "images_per_s_network": rates[0].item(), "images_per_s_end_to_end": rates[1].item()}
        with open(out / "samples.json", "w") as f:
            json.dump(report, f, indent=1)
        what = "network" + (" (latents)" if latents else "")
        print(f"{what}: {rates[0]:.2f} images/s, end to end"
              + (" (with VAE decode)" if latents else "") + f": {rates[1]:.2f} images/s"
              + (" (first batch excluded)" if skip else "") + f", {world} process(es)")
        print(f"wrote {out / 'samples.npz'} ({args.num_samples} x {'x'.join(map(str, img_shape))})"
              + (f" and {out / 'grid.png'}" if args.grid else ""))
    return out


if __name__ == "__main__":
    main()
