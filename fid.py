"""
FID as the published numbers compute it (Heusel et al. 2017): Gaussians fitted to the 2048-d
pool features of the TensorFlow Inception-v3 of 2015-12-05 (of the original FID code and the
ADM evaluation suite; here pytorch-fid's PyTorch port), FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    python fid.py samples.npz --ref cifar10-train                  # CIFAR-10's 50,000 training images
    python fid.py samples.npz --ref Ref/VIRTUAL_imagenet256_labeled.npz     # the authors' reference batch,
    python fid.py samples.npz --ref zlab-princeton/SoFlow/Ref/cifar10.npz   # fetched from the hub once
    python fid.py --save_stats cifar10_train_stats.npz cifar10-train

Samples: an .npz of uint8 images (N, H, W, 3) under 'arr_0' (the ADM format sample.py writes) or an image
folder. A reference: either, a dataset name, or an .npz of statistics ('mu', 'sigma').
"""

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torchvision.models import inception as tv
from tqdm import tqdm

# pytorch-fid's port of the TF graph; the name ends with the first hex digits of the file's SHA-256
# (torch.hub's convention), which the download checks. Other weights compare with nothing published.
WEIGHTS_SHA256_PREFIX = "6726825d"
WEIGHTS_FILENAME = f"pt_inception-2015-12-05-{WEIGHTS_SHA256_PREFIX}.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILENAME}"
WEIGHTS_ENV = "SOFLOW_FID_WEIGHTS"      # a local copy of the weights file, instead of the download
HUB_REPO = "zlab-princeton/SoFlow"      # the authors' release; its FID reference batches are under Ref/
FEATURE_DIM = 2048
PIPELINE = "uint8/255 -> bilinear 299 (align_corners=False) -> 2x-1 -> pt_inception pool3, fp32"  # in cache keys
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
DATASETS = ("cifar10-train", "cifar10-test")
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "soflow" / "fid"

def first_line(e):
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"

# -----------------------------------------------------------------------------
# The FID Inception-v3: torchvision's (the weights file's keys) with the TF graph's three
# differences: (1) the 3x3 average pools of the A, C and E blocks average the pixels inside the
# image only; (2) the last E block (Mixed_7c) max-pools in its pool branch (the Inception paper
# says average; FID numbers depend on it); (3) 1008 classes (unused, but in the weights).

def avg_pool_3x3(x):    # a border pixel: the mean of its 6 (edge) or 4 (corner) in-image neighbours
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

class FIDInceptionA(tv.InceptionA):     # Mixed_5b/5c/5d
    def _forward(self, x):
        return [self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(avg_pool_3x3(x))]

class FIDInceptionC(tv.InceptionC):     # Mixed_6b..6e
    def _forward(self, x):
        b77 = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))))
        return [self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), b77,
                self.branch_pool(avg_pool_3x3(x))]

class FIDInceptionE(tv.InceptionE):     # Mixed_7b (pool='avg'), Mixed_7c (pool='max')
    def __init__(self, in_channels, pool):
        super().__init__(in_channels)
        self.pool = pool

    def _forward(self, x):
        b3, bd = self.branch3x3_1(x), self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = avg_pool_3x3(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return [self.branch1x1(x), torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
                torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1), self.branch_pool(pooled)]

class FIDInception(tv.Inception3):
    """torchvision's Inception3 with the blocks above, as pytorch-fid builds it."""
    LAYERS = ("Conv2d_1a_3x3 Conv2d_2a_3x3 Conv2d_2b_3x3 maxpool1 Conv2d_3b_1x1 Conv2d_4a_3x3 maxpool2 "
              "Mixed_5b Mixed_5c Mixed_5d Mixed_6a Mixed_6b Mixed_6c Mixed_6d Mixed_6e Mixed_7a Mixed_7b Mixed_7c "
              "avgpool").split()
    def __init__(self):
        super().__init__(num_classes=1008, aux_logits=False, init_weights=False, inception_blocks=[
            tv.BasicConv2d, FIDInceptionA, tv.InceptionB, FIDInceptionC, tv.InceptionD,
            lambda c: FIDInceptionE(c, pool="max" if c == 2048 else "avg"), tv.InceptionAux])

    def forward(self, x):
        """(N, 3, H, W) in [0, 1] -> (N, 2048), TF's 'pool_3'; pytorch-fid's input: bilinear to 299 x 299, [-1, 1]."""
        x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
        for name in self.LAYERS:
            x = getattr(self, name)(x)
        return x.flatten(1)

def load_inception(weights=None, device="cpu"):
    """FIDInception, eval mode, no gradients, the weights loaded strictly from `weights`, else $SOFLOW_FID_WEIGHTS,
    else the torch.hub cache (downloaded there on first use). A bad file: one line, before any compute."""
    given = weights or os.environ.get(WEIGHTS_ENV)
    path = Path(given or Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME)
    if given and not path.is_file():
        raise FileNotFoundError(f"Inception weights file {path} does not exist (download it from {WEIGHTS_URL})")
    if not path.is_file():              # download_url_to_file shows its own progress bar
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(WEIGHTS_URL, str(path), hash_prefix=WEIGHTS_SHA256_PREFIX)
        except (OSError, RuntimeError) as e:    # offline, proxy, disk full (OSError); wrong hash (RuntimeError)
            raise FileNotFoundError(
                f"the FID Inception weights are missing and could not be downloaded ({first_line(e)}): download "
                f"{WEIGHTS_URL} and put it at {path}, or pass --weights PATH (or set {WEIGHTS_ENV}=PATH)") from e
    with torch.device("meta"):          # no random initialisation of 24M parameters to overwrite
        model = FIDInception()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True, assign=True)
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError) as e:    # damaged, or another network's
        raise ValueError(f"{path} is not a readable {WEIGHTS_FILENAME} ({first_line(e)}); get it from {WEIGHTS_URL}")
    model.weights_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()     # a key of cached statistics
    if not model.weights_sha256.startswith(WEIGHTS_SHA256_PREFIX):
        print(f"note: {path} is not {WEIGHTS_FILENAME}; these FIDs compare with no published number", file=sys.stderr)
    return model.eval().requires_grad_(False).to(device)

# -----------------------------------------------------------------------------
# Images: checked before any compute, then read batch by batch.

class Images(NamedTuple):
    name: str
    n: int                  # images of shape (H, W, 3), uint8
    batches: Callable       # (batch_size, num_workers=0) -> iterator of (B, H, W, 3) uint8 tensors
    identity: dict | None   # what the statistics cache keys them by (None: never cached)

def check_images(shape, dtype, name):
    """Images (N >= 2, H, W, 3) of uint8 (the ADM format), from an array's or an .npy header's shape and dtype."""
    if len(shape) != 4 or shape[-1] != 3:
        transposed, gray = len(shape) == 4 and shape[1] == 3, len(shape) == 3 or len(shape) == 4 and shape[-1] == 1
        hint = (" This looks like (N, 3, H, W); transpose it with x.transpose(0, 2, 3, 1)." if transposed else
                " Grayscale images need 3 channels: np.repeat(x.reshape(*x.shape[:3], 1), 3, axis=-1)." if gray else "")
        raise ValueError(f"{name}: expected images of shape (N, H, W, 3), got {tuple(shape)}.{hint}")
    if shape[0] < 2:
        raise ValueError(f"{name}: a covariance needs at least 2 images, got {shape[0]} (FID-50K uses 50,000)")
    if dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 images in [0, 255] (the ADM format), got dtype {dtype}; from "
                         "floats in [0, 1]: np.round(x * 255).astype(np.uint8)")

def array_images(x, name="images", identity=None):
    """An array (N, H, W, 3) of uint8 (numpy or torch), checked, in batches."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    check_images(x.shape, x.dtype, name)
    return Images(name, len(x), lambda b, w=0: (torch.from_numpy(x[i:i + b]) for i in range(0, len(x), b)), identity)

def npz_images(path):
    """The images under 'arr_0' of an .npz, checked from the header, streamed (50,000 ImageNet images: 10 GB)."""
    path, name = Path(path), f"{path} ['arr_0']"
    with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        (n, *shape), fortran_order, dtype = header(f)
        offset = f.tell()
    check_images((n, *shape), dtype, name)
    identity = {"npz": str(path.resolve()), "size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
    if fortran_order:       # np.save of an F-contiguous array: no image lies in one piece, so read it whole
        return array_images(np.load(path)["arr_0"], str(path), identity)
    def batches(batch_size, num_workers=0):
        with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
            f.seek(offset)
            for i in range(0, n, batch_size):
                buf = f.read(min(batch_size, n - i) * int(np.prod(shape)))
                if len(buf) != min(batch_size, n - i) * int(np.prod(shape)):
                    raise ValueError(f"{name}: the file is truncated after {i} images")
                yield torch.frombuffer(bytearray(buf), dtype=torch.uint8).reshape(-1, *shape)
    return Images(str(path), n, batches, identity)

def _decode(files):     # a batch of image files -> (B, H, W, 3) uint8; runs in the DataLoader's workers
    from PIL import Image
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files]))

def folder_images(path):
    """Every image file under a folder (recursively, sorted), decoded to RGB."""
    from PIL import Image
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if len(files) < 2:
        raise ValueError(f"{path}: a covariance needs at least 2 images, found {len(files)} image files "
                         f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    sizes = {}
    for p in files:         # headers only: cheap, and a mixed folder fails now rather than mid-run
        with Image.open(p) as im:
            sizes.setdefault(im.size, p.name)
    if len(sizes) > 1:
        examples = ", ".join(f"{p}: {w}x{h}" for (w, h), p in list(sizes.items())[:3])
        raise ValueError(f"{path}: all images must have the same size; found {len(sizes)} sizes ({examples})")
    listing = "".join(f"{p.relative_to(path)}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}\n" for p in files)
    identity = {"folder": str(path.resolve()), "digest": hashlib.sha256(listing.encode()).hexdigest()}
    loader = lambda b, w=0: iter(torch.utils.data.DataLoader(files, batch_size=b, num_workers=w, collate_fn=_decode))
    return Images(str(path), len(files), loader, identity)

def dataset_images(name, data_root="data"):
    """'cifar10-train' (the CIFAR-10 literature's FID reference) or 'cifar10-test', through torchvision."""
    from torchvision.datasets import CIFAR10
    try:
        data = CIFAR10(root=data_root, train=name == "cifar10-train", download=True).data   # uint8 (N, 32, 32, 3)
    except (OSError, RuntimeError) as e:      # offline (OSError); a damaged archive (RuntimeError)
        raise FileNotFoundError(f"CIFAR-10 is not under {data_root} and could not be downloaded ({first_line(e)}); "
                                f"put https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz in {data_root}, or "
                                "pass --data_root") from e
    return array_images(data, name, identity={"dataset": name})

def open_source(spec, data_root="data"):
    """Images (of a dataset name, an array, an .npz with 'arr_0', a folder) or the Path of an .npz of statistics
    ('mu', 'sigma'), checked now. 'zlab-princeton/SoFlow/Ref/x.npz' (or 'Ref/x.npz' where no such local path
    exists) is that file of the authors' Hugging Face repository, downloaded once into the usual hub cache."""
    if isinstance(spec, str) and spec in DATASETS:
        return dataset_images(spec, data_root)
    if not isinstance(spec, (str, Path)):
        return array_images(spec)
    path = Path(spec)
    if not path.exists() and str(spec).startswith((f"{HUB_REPO}/", "Ref/")):
        import huggingface_hub
        filename = str(spec).removeprefix(f"{HUB_REPO}/")
        try:
            path = Path(huggingface_hub.hf_hub_download(HUB_REPO, filename))
        except (OSError, huggingface_hub.errors.EntryNotFoundError) as e:     # offline, no such file, ...
            raise FileNotFoundError(f"{spec}: could not fetch {filename} from the Hugging Face repository {HUB_REPO} "
                                    f"({first_line(e)}); download https://huggingface.co/{HUB_REPO}/resolve/main/"
                                    f"{filename} by hand and pass its path") from e
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected an .npz, an image folder, one of {DATASETS} "
                                f"or a file of {HUB_REPO} such as Ref/cifar10.npz)")
    if path.is_dir():
        return folder_images(path)
    try:
        with zipfile.ZipFile(path) as z:
            keys = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a readable .npz file (nor a folder, nor one of {DATASETS})") from None
    if "mu" in keys and "sigma" in keys:
        load_statistics(path)       # shapes checked now
        return path
    if "arr_0" in keys:
        return npz_images(path)
    raise ValueError(f"{path} has neither images under 'arr_0' nor statistics 'mu' and 'sigma' (keys: {keys})")

# -----------------------------------------------------------------------------
# Statistics and the Frechet distance.

class Stats(NamedTuple):
    mu: np.ndarray          # (2048,)
    sigma: np.ndarray       # (2048, 2048)
    n: int | None           # number of images; None when unknown (ADM reference batches)

@contextlib.contextmanager
def fp32_exact():
    """TF32 off inside. FID is a small difference of large terms: TF32 (11 bits) or bf16 (8) at every operand of 94
    convolutions moves it by an amount of the GPU, kernels and batch size, absent from the published (fp32) numbers."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved

@torch.no_grad()
def activations(images, model, batch_size=200, device=None, num_workers=0, progress=True):
    """Features (N, 2048) float32 of `images` (Images, or a uint8 array); fp32, no TF32 or autocast."""
    images = images if isinstance(images, Images) else array_images(images)
    device = torch.device(device or next(model.parameters()).device)
    out, i = np.empty((images.n, FEATURE_DIM), dtype=np.float32), 0
    bar = tqdm(total=images.n, unit="img", desc=f"Inception features of {images.name}", disable=not progress)
    with fp32_exact(), torch.autocast(device.type, enabled=False), bar:
        for batch in images.batches(batch_size, num_workers):
            out[i:i + len(batch)] = model(batch.to(device).permute(0, 3, 1, 2).float() / 255).cpu().numpy()
            i += len(batch)
            bar.update(len(batch))
    assert i == images.n, f"{images.name}: read {i} images, expected {images.n}"
    return out

def statistics_from_activations(act):
    """Mean and covariance (unbiased, np.cov) of the features, in float64."""
    act = np.asarray(act)
    if act.ndim != 2 or len(act) < 2:
        raise ValueError(f"need an (N >= 2, D) array of features, got shape {act.shape}")
    if len(act) < FEATURE_DIM:
        warnings.warn(f"FID from {len(act)} < {FEATURE_DIM} images: the covariance is rank-deficient and FID "
                      "strongly biased; only FID-50K compares with published numbers", stacklevel=2)
    return Stats(act.mean(axis=0, dtype=np.float64), np.cov(act, rowvar=False), len(act))

def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6, rank=None):
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the root by scipy.linalg.sqrtm as in TTUR, pytorch-fid
    and ADM (not finite: warn, add eps to the diagonals; imaginary round-off dropped). rank: a bound on
    rank(S1) + rank(S2) (n1 - 1 + n2 - 1 for n1, n2 images); below the dimension the root is taken in the
    span of both, where S1 S2 lives: the same trace from a small, well-conditioned sqrtm."""
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.ndim != 1 or mu2.shape != mu1.shape or not sigma1.shape == sigma2.shape == mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    d = len(mu1)
    s1, s2 = sigma1, sigma2
    if rank is not None and 0 < rank < d:   # an orthonormal basis q of range(S1) + range(S2), if it fits in rank
        s = sigma1 / np.linalg.norm(sigma1) + sigma2 / np.linalg.norm(sigma2)
        q = np.linalg.qr(s @ np.random.default_rng(0).standard_normal((d, rank)))[0]   # range(s), if rank(s) <= rank
        if all(np.linalg.norm(sig - q @ (q.T @ sig)) <= 1e-9 * np.linalg.norm(sig) for sig in (sigma1, sigma2)):
            s1, s2 = q.T @ sigma1 @ q, q.T @ sigma2 @ q
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular product of covariances; adding {eps} to their diagonals", stacklevel=2)
        covmean = linalg.sqrtm((s1 + eps * np.eye(len(s1))) @ (s2 + eps * np.eye(len(s1))))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))

def save_statistics(path, stats, key=None):
    """mu, sigma (the ADM reference format), n and the cache key (JSON), written atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, mu=stats.mu, sigma=stats.sigma, n=stats.n or -1, key=json.dumps(key or {}, sort_keys=True))
    os.replace(tmp, path)

def load_statistics(path):
    """(Stats, key dict) from an .npz with 'mu' and 'sigma' (ours or ADM's)."""
    with np.load(path, allow_pickle=False) as f:
        n = int(f["n"]) if "n" in f.files else -1
        stats = Stats(f["mu"].astype(np.float64), f["sigma"].astype(np.float64), n if n > 0 else None)
        key = json.loads(str(f["key"])) if "key" in f.files else {}
    if stats.mu.ndim != 1 or stats.sigma.shape != stats.mu.shape * 2:
        raise ValueError(f"{path}: 'mu' {stats.mu.shape}, 'sigma' {stats.sigma.shape}: not a mean and its covariance")
    return stats, key

def statistics(source, model, batch_size=200, device=None, num_workers=0, cache_dir=None, progress=True):
    """(Stats, key) of what open_source returns; model from load_inception (None for a statistics file). Those of
    images are cached in cache_dir (None: not) keyed by the images' identity, the weights' SHA-256 and the pipeline."""
    if not isinstance(source, Images):
        stats, key = load_statistics(source)
        if model is not None and key.get("weights_sha256") not in (None, model.weights_sha256):
            print(f"warning: {source} was computed with other Inception weights", file=sys.stderr)
        return stats, key
    key = {"source": source.identity, "weights_sha256": model.weights_sha256, "pipeline": PIPELINE}
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source.name).name)[:40]
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{label}-{tag}.npz" if cache_dir is not None and source.identity is not None else None
    if cache is not None and cache.is_file() and (cached := load_statistics(cache))[1] == key:
        print(f"using cached statistics of {source.name}: {cache}", file=sys.stderr)
        return cached
    stats = statistics_from_activations(activations(source, model, batch_size, device, num_workers, progress))
    if cache is not None:
        save_statistics(cache, stats, key)
        print(f"cached statistics of {source.name}: {cache}", file=sys.stderr)
    return stats, key

def compute_fid(samples, ref, weights=None, batch_size=200, device=None, num_workers=0, data_root="data",
                cache_dir=DEFAULT_CACHE_DIR, progress=True):
    """FID of `samples` against `ref` (each anything open_source takes), all checked before any compute."""
    sources = [open_source(s, data_root) for s in (samples, ref)]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_inception(weights, device) if any(isinstance(s, Images) for s in sources) else None
    (s1, _), (s2, _) = (statistics(s, model, batch_size, device, num_workers, cache_dir, progress) for s in sources)
    return frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma, rank=s1.n - 1 + s2.n - 1 if s1.n and s2.n else None)

def main(argv=None):
    p = argparse.ArgumentParser(prog="fid.py", description="FID with the TF Inception-v3 of the literature.")
    p.error = lambda msg: p.exit(2, f"{p.prog}: error: {msg} (--help lists the options)\n")
    p.add_argument("source", help="an .npz of images (N, H, W, 3) under 'arr_0' or of statistics, a folder, a dataset")
    p.add_argument("--ref", help=f"the same, or a file of {HUB_REPO} on the hub: Ref/cifar10.npz, {HUB_REPO}/Ref/...")
    p.add_argument("--save_stats", metavar="OUT.npz", help="write SOURCE's statistics (usable as --ref); no FID")
    p.add_argument("--weights", metavar="PATH", help=f"{WEIGHTS_FILENAME} (default: ${WEIGHTS_ENV}, else torch.hub's)")
    p.add_argument("--batch_size", type=int, default=200, help="(default: 200)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: cuda if any)")
    p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding folders' images")
    p.add_argument("--data_root", default="data", help="where CIFAR-10 is, or is downloaded to (default: data)")
    p.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR), help="statistics of images are cached here")
    p.add_argument("--no_cache", action="store_true", help="neither read nor write cached statistics")
    args = p.parse_args(argv)
    if (args.ref is None) == (args.save_stats is None):
        p.error("give exactly one of --ref REF (compute a FID) and --save_stats OUT.npz")
    if args.batch_size < 1 or args.num_workers < 0:
        p.error(f"--batch_size={args.batch_size} must be >= 1 and --num_workers={args.num_workers} >= 0")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device) or args.device != "cpu" and not torch.cuda.is_available():
        p.error(f"--device={args.device}: use cpu, or cuda / cuda:N where a CUDA device exists")
    opts = dict(batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                cache_dir=None if args.no_cache else args.cache_dir)
    try:                        # wrong input (a path, a file, the weights, the data): one line, no traceback
        if args.save_stats is None:
            value = compute_fid(args.source, args.ref, weights=args.weights, data_root=args.data_root, **opts)
            print(f"FID: {value:.4f}")
            return value
        source = open_source(args.source, args.data_root)
        if not isinstance(source, Images):
            p.error(f"{args.source} already holds statistics")
        stats, key = statistics(source, load_inception(args.weights, args.device), **opts)
        save_statistics(args.save_stats, stats, key)
        print(f"wrote the statistics of {stats.n} images of {source.name} to {args.save_stats}")
    except (ValueError, OSError) as e:
        raise SystemExit(f"{p.prog}: error: {e}") from None

if __name__ == "__main__":
    main()
