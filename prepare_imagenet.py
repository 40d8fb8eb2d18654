"""
Encode an ImageNet-style image folder into SD-VAE latents for train_imagenet.py.

    torchrun --nproc_per_node=8 prepare_imagenet.py --data_dir=/data/imagenet/train
    python prepare_imagenet.py --data_dir=/data/imagenet/train --vae=/models/sd-vae-ft-mse   # one device

Every image is center-cropped as ADM and DiT do (halve it with a box filter while its
short side is at least twice the target, resize the short side to image_size with
BICUBIC, cut the central square; SPEC section 7), mapped to [-1, 1] and encoded by the
VAE. The encoder's posterior is Gaussian: its mean and std (float32, 4 x 32 x 32 each
for the SD-VAE at 256 x 256) are stored, so that training draws a fresh latent,
mean + std * noise, every time it uses an image, as the released code does. With
--flip=True the horizontally flipped images are encoded as well and stored as extra
entries (index N + i is the flip of image i; the released setting stores no flips).

Output (out_dir):
    mean.npy, std.npy   float32 (N, C, h, w), memory-mapped .npy files
    labels.npy          int64 (N,): the index of the image's class folder (sorted names)
    meta.json           vae, image_size, latent_shape, num_items, num_classes, classes,
                        flip, complete (true once every chunk is written)
    done/               one marker per finished chunk of chunk_size images

The work is cut into chunks; chunk c goes to process c mod world_size (torchrun), and a
chunk is marked done only after its latents are flushed to disk, so running the same
command again after an interruption encodes only the chunks that are missing.
ImageNet's 1,281,167 training images take 2 x 16 KiB per image: 42.0 GB (39.1 GiB),
twice that with --flip=True.

Settings (--name=value): see the values below.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

# -----------------------------------------------------------------------------
data_dir = ""                          # ImageFolder layout: one subfolder of images per class
out_dir = "data/imagenet256_latents"
vae = "stabilityai/sd-vae-ft-mse"      # diffusers AutoencoderKL: hub name or local folder
image_size = 256
flip = False                           # also encode horizontal flips (stored as extra entries)
batch_size = 64                        # images per encoder call
chunk_size = 8192                      # images per resumable unit of work
num_workers = 8                        # image decoding processes per GPU
device = "auto"                        # 'cuda' | 'cpu' | 'auto'
progress = True
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))}


def parse_args(argv):
    """nanoGPT-style --name=value overrides of the values above (as train_imagenet.py)."""
    import ast
    C = dict(DEFAULTS)
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            for k, v in DEFAULTS.items():
                print(f"  --{k}={v!r}")
            raise SystemExit(0)
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"bad argument {arg!r}: use --name=value (--help lists the names)")
        key, val = arg[2:].split("=", 1)
        if key not in DEFAULTS:
            raise SystemExit(f"unknown setting {key!r} (--help lists the names)")
        if not isinstance(DEFAULTS[key], str):
            try:
                val = ast.literal_eval(val)
            except (ValueError, SyntaxError):
                pass
            if type(val) is not type(DEFAULTS[key]):
                raise SystemExit(f"--{key}: expected a {type(DEFAULTS[key]).__name__}, got {val!r}")
        C[key] = val
    for k in ("image_size", "batch_size", "chunk_size"):
        if C[k] < 1:
            raise SystemExit(f"--{k}={C[k]}: must be >= 1")
    if C["num_workers"] < 0:
        raise SystemExit(f"--num_workers={C['num_workers']}: must be >= 0")
    if C["device"] not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"--device={C['device']!r}: must be 'auto', 'cpu' or 'cuda'")
    return C


def center_crop(image, size):
    """The ADM / DiT center crop of a PIL image to size x size: while the short side is
    at least 2 * size, halve the image with a box filter (cheap, alias-free); then resize
    so that the short side is `size` (BICUBIC) and cut the central square."""
    from PIL import Image
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    a = np.asarray(image)
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[top:top + size, left:left + size]


class Pixels:
    """A transform: PIL image -> (3, size, size) float tensor in [-1, 1]."""

    def __init__(self, size):
        self.size = size

    def __call__(self, image):
        a = center_crop(image.convert("RGB"), self.size)
        return torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 127.5 - 1


def open_folder(path, size):
    """The ImageFolder, or a message that says what was expected."""
    from torchvision.datasets import ImageFolder
    expected = (f"expected an ImageNet-style training folder: {path}/<class>/<image>.JPEG, one subfolder per "
                f"class (ImageNet: the 1000 folders n01440764 ... of ILSVRC2012_img_train.tar, each tar extracted "
                f"into its own folder)")
    if not path or not os.path.isdir(path):
        raise SystemExit(f"--data_dir={path!r} is not a folder; {expected}")
    try:
        return ImageFolder(path, transform=Pixels(size))
    except (FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"no images found in {path!r} ({e}); {expected}") from e


def load_vae(name, device):
    try:
        from diffusers.models import AutoencoderKL
        return AutoencoderKL.from_pretrained(name, low_cpu_mem_usage=False).to(device).eval().requires_grad_(False)
    except Exception as e:
        raise SystemExit(f"cannot load the VAE {name!r} ({type(e).__name__}: {e}). The default downloads "
                         f"stabilityai/sd-vae-ft-mse from the Hugging Face hub; without internet, fetch it elsewhere "
                         f"(huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir sd-vae-ft-mse), copy the "
                         f"folder here and pass --vae=sd-vae-ft-mse") from e


@torch.no_grad()
def encode(vae_model, x):
    """Posterior (mean, std) of the encoder, float32."""
    post = vae_model.encode(x).latent_dist
    return post.mean.float(), post.std.float()


def write_json(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None):
    C = parse_args(sys.argv[1:] if argv is None else argv)
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    want = C["device"] if C["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(f"cuda:{local}" if want == "cuda" else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    folder = open_folder(C["data_dir"], C["image_size"])
    if world > 1:
        dist.init_process_group("gloo")         # barriers only
    try:
        run(C, folder, rank, world, dev)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def run(C, folder, rank, world, dev):
    from tqdm import tqdm
    out = C["out_dir"]
    n = len(folder)
    total = 2 * n if C["flip"] else n
    vae_model = load_vae(C["vae"], dev)
    probe = torch.zeros(1, 3, C["image_size"], C["image_size"], device=dev)
    shape = tuple(encode(vae_model, probe)[0].shape[1:])
    meta = dict(vae=C["vae"], image_size=C["image_size"], latent_shape=list(shape), num_items=total,
                num_images=n, num_classes=len(folder.classes), classes=folder.classes, flip=C["flip"],
                chunk_size=C["chunk_size"], data_dir=os.path.abspath(C["data_dir"]), complete=False)
    meta_path = os.path.join(out, "meta.json")
    if rank == 0:
        os.makedirs(os.path.join(out, "done"), exist_ok=True)
        if os.path.isfile(meta_path):           # an earlier run: it must be the same job
            with open(meta_path) as f:
                old = json.load(f)
            differ = [k for k in meta if k not in ("complete", "data_dir") and old.get(k) != meta[k]]
            if differ:
                raise SystemExit(f"{out} holds latents of another job (differing: {', '.join(differ)}); "
                                 f"use another --out_dir or delete it")
        else:
            write_json(meta, meta_path)
        for name in ("mean", "std"):
            path = os.path.join(out, f"{name}.npy")
            if not os.path.isfile(path):
                np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, *shape)).flush()
        labels = np.asarray(folder.targets, dtype=np.int64)
        np.save(os.path.join(out, "labels.npy"), np.concatenate([labels, labels]) if C["flip"] else labels)
    barrier()
    mean = np.load(os.path.join(out, "mean.npy"), mmap_mode="r+")
    std = np.load(os.path.join(out, "std.npy"), mmap_mode="r+")

    chunks = [c for c in range(rank, -(-n // C["chunk_size"]), world)
              if not os.path.exists(os.path.join(out, "done", f"{c:06d}"))]
    todo = sum(min(C["chunk_size"], n - c * C["chunk_size"]) for c in chunks)
    bar = tqdm(total=todo, disable=not (rank == 0 and C["progress"]), unit="img",
               desc=f"encoding (rank 0 of {world})")
    for c in chunks:
        lo, hi = c * C["chunk_size"], min((c + 1) * C["chunk_size"], n)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(folder, range(lo, hi)),
                                             batch_size=C["batch_size"], num_workers=C["num_workers"],
                                             pin_memory=dev.type == "cuda")
        i = lo
        for x, _ in loader:
            x = x.to(dev, non_blocking=True)
            views = [(0, x)] + ([(n, x.flip(3))] if C["flip"] else [])
            for offset, v in views:
                m, s = encode(vae_model, v)
                mean[offset + i:offset + i + len(x)] = m.cpu().numpy()
                std[offset + i:offset + i + len(x)] = s.cpu().numpy()
            i += len(x)
            bar.update(len(x))
        mean.flush()
        std.flush()
        open(os.path.join(out, "done", f"{c:06d}"), "w").close()   # only after the data are on disk
    bar.close()
    barrier()
    if rank == 0:
        missing = [c for c in range(-(-n // C["chunk_size"])) if not os.path.exists(os.path.join(out, "done", f"{c:06d}"))]
        if missing:
            raise SystemExit(f"{len(missing)} chunks are missing (a process failed?); run the command again")
        write_json({**meta, "complete": True}, meta_path)
        print(f"{total} latents of shape {shape} in {out}", flush=True)


if __name__ == "__main__":
    main()
