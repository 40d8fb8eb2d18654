"""
Encode an ImageNet-style image folder into SD-VAE latents for train_imagenet.py.

    torchrun --nproc_per_node=8 prepare_imagenet.py --data_dir /data/imagenet/train
    python prepare_imagenet.py --data_dir /data/imagenet/train --vae /models/sd-vae-ft-mse   # one device

Each image is center-cropped as ADM and DiT do (halve with a box filter while the short
side is at least twice the target, resize the short side to image_size with BICUBIC, cut
the central square), mapped to [-1, 1] and encoded. The encoder's posterior is Gaussian:
its mean and std are stored (float32, 4 x 32 x 32 each at 256 x 256), so that training
draws a fresh latent, mean + std * noise, every time it uses an image, as the authors'
train.py does. With --flip True the flipped images are stored too (entry N + i is the
flip of image i; the authors store none).

Output in out_dir: mean.npy, std.npy (N, C, h, w) float32; labels.npy (N,) int64 (the
class folder's index, names sorted); meta.json (vae, image_size, latent_shape,
num_items, num_classes, classes, flip, complete); done/ (one marker per chunk). Chunk c
goes to process c mod world_size and is marked done only once its latents are on disk,
so the same command after an interruption encodes only what is missing. ImageNet's
1,281,167 training images take 42.0 GB.
"""

import argparse
import json
import os

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoints
import settings
import trainer


def positive(text):
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return int(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: p.exit(2, f"{p.prog}: error: {msg} (--help lists the options)\n")
    p.add_argument("--data_dir", default="", help="ImageFolder layout: one subfolder of images per class")
    p.add_argument("--out_dir", default="data/imagenet256_latents")
    p.add_argument("--vae", default=checkpoints.DEFAULT_VAE, help="diffusers AutoencoderKL: hub id or local folder")
    p.add_argument("--image_size", type=positive, default=256)
    p.add_argument("--flip", type=settings.boolean, default=False, help="also encode the horizontal flips")
    p.add_argument("--batch_size", type=positive, default=64, help="images per encoder call")
    p.add_argument("--chunk_size", type=positive, default=8192, help="images per resumable unit of work")
    p.add_argument("--num_workers", type=int, default=8, help="image decoding processes per GPU")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--progress", type=settings.boolean, default=True)
    return p.parse_args(argv)


def center_crop(image, size):
    """The ADM / DiT center crop of a PIL image to size x size (uint8 array)."""
    from PIL import Image
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    a = np.asarray(image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC))
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[top:top + size, left:left + size]


def open_folder(path, size):
    from torchvision.datasets import ImageFolder
    expected = ("expected an ImageNet-style training folder: PATH/<class>/<image>.JPEG, one subfolder per class "
                "(the 1000 folders n01440764 ... of ILSVRC2012_img_train.tar, each tar extracted in its own folder)")
    if not path or not os.path.isdir(path):
        raise SystemExit(f"error: --data_dir={path!r} is not a folder; {expected}")
    to_pixels = lambda im: torch.from_numpy(np.array(center_crop(im.convert("RGB"), size))).permute(2, 0, 1) / 127.5 - 1
    try:
        return ImageFolder(path, transform=to_pixels)
    except (FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"error: no images found in {path!r} ({e}); {expected}") from None


@torch.no_grad()                     # the script only encodes: no autograd graph
def main(argv=None):
    C = parse_args(argv)
    rank, world, local = trainer.world()
    cuda = C.device == "cuda" or (C.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    folder = open_folder(C.data_dir, C.image_size)
    try:
        vae = checkpoints.load_vae(C.vae, device)
    except ValueError as e:
        raise SystemExit(f"error: {e} (--vae=PATH)") from None
    if world > 1:
        dist.init_process_group("gloo")                     # barriers only
    barrier = dist.barrier if world > 1 else (lambda: None)
    encode = lambda x: (lambda post: (post.mean.float(), post.std.float()))(vae.encode(x).latent_dist)
    n, out = len(folder), C.out_dir
    total = 2 * n if C.flip else n
    shape = tuple(encode(torch.zeros(1, 3, C.image_size, C.image_size, device=device))[0].shape[1:])
    meta = dict(vae=C.vae, image_size=C.image_size, latent_shape=list(shape), num_items=total, num_images=n,
                num_classes=len(folder.classes), classes=folder.classes, flip=C.flip, chunk_size=C.chunk_size,
                complete=False)
    meta_path = os.path.join(out, "meta.json")
    write_meta = lambda m: checkpoints.atomic_write(meta_path, lambda f: json.dump(m, f, indent=1), text=True)
    if rank == 0:
        os.makedirs(os.path.join(out, "done"), exist_ok=True)
        if os.path.isfile(meta_path):                        # an earlier run: it must be the same job
            old = json.load(open(meta_path))
            differ = [k for k in meta if k != "complete" and old.get(k) != meta[k]]
            if differ:
                raise SystemExit(f"error: {out} holds latents of another job (differing: {', '.join(differ)}); "
                                 f"use another --out_dir or delete it")
        else:
            write_meta(meta)
        for name in ("mean", "std"):
            if not os.path.isfile(os.path.join(out, f"{name}.npy")):
                np.lib.format.open_memmap(os.path.join(out, f"{name}.npy"), "w+", np.float32, (total, *shape)).flush()
        labels = np.asarray(folder.targets, dtype=np.int64)
        np.save(os.path.join(out, "labels.npy"), np.concatenate([labels, labels]) if C.flip else labels)
    barrier()
    mean, std = (np.load(os.path.join(out, f"{name}.npy"), mmap_mode="r+") for name in ("mean", "std"))
    done = lambda c: os.path.join(out, "done", f"{c:06d}")
    chunks = [c for c in range(rank, -(-n // C.chunk_size), world) if not os.path.exists(done(c))]
    bar = tqdm(total=sum(min(C.chunk_size, n - c * C.chunk_size) for c in chunks), unit="img",
               disable=rank != 0 or not C.progress, desc=f"encoding (rank 0 of {world})")
    for c in chunks:
        i = c * C.chunk_size
        part = torch.utils.data.Subset(folder, range(i, min(i + C.chunk_size, n)))
        for x, _ in torch.utils.data.DataLoader(part, batch_size=C.batch_size, num_workers=C.num_workers,
                                                pin_memory=cuda):
            x = x.to(device, non_blocking=True)
            for offset, view in [(0, x)] + ([(n, x.flip(3))] if C.flip else []):
                m, s = encode(view)
                mean[offset + i:offset + i + len(x)], std[offset + i:offset + i + len(x)] = m.cpu(), s.cpu()
            i += len(x)
            bar.update(len(x))
        mean.flush()
        std.flush()
        open(done(c), "w").close()                           # only once the data are on disk
    bar.close()
    barrier()
    if rank == 0:
        missing = [c for c in range(-(-n // C.chunk_size)) if not os.path.exists(done(c))]
        if missing:
            raise SystemExit(f"error: {len(missing)} chunks are missing (a process failed?); run the command again")
        write_meta({**meta, "complete": True})
        print(f"{total} latents of shape {shape} in {out}", flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
