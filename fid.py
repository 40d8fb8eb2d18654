"""FID evaluation: the Frechet Inception Distance the way the literature computes it.

    python fid.py samples.npz --ref cifar10-train      # CIFAR-10, 50,000 training images
    python fid.py samples.npz --ref VIRTUAL_imagenet256_labeled.npz   # ADM reference batch
    python fid.py samples.npz --ref path/to/image/folder
    python fid.py --save-stats cifar10_train_stats.npz cifar10-train

FID (Heusel et al. 2017) fits a Gaussian to the 2048-d pool features of an
Inception-v3 network for each set of images and reports the Frechet distance
between the two Gaussians,

    FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

The published numbers (the SoFlow paper, ADM, DiT, MeanFlow...) use one
particular network: the TensorFlow Inception graph of 2015-12-05. pytorch-fid
ported its weights to PyTorch (the file WEIGHTS_FILENAME below); that port is
torchvision's Inception-v3 layout with 1008 classes and three FID-specific
quirks of the TF graph, reproduced by the blocks below. Any other Inception
(torchvision's ImageNet weights, say) gives numbers that are not comparable.

Samples come as an .npz holding uint8 images (N, H, W, 3) under 'arr_0' (the
ADM evaluation-suite format, what sample.py writes) or as a folder of images.
A reference is a dataset ('cifar10-train'), a folder, an .npz of images, or an
.npz of precomputed statistics ('mu', 'sigma'), like the ADM reference batches.
"""

import argparse
import functools
import hashlib
import json
import os
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import linalg
from torchvision.models.inception import BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE
from tqdm import tqdm

# pytorch-fid's port of the TF Inception graph inception-2015-12-05. The
# filename ends with the first hex digits of the file's SHA-256 (the torch.hub
# convention), which the download checks.
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"
WEIGHTS_ENV = "SOFLOW_FID_WEIGHTS"  # a local copy of the weights file, instead of the download

# The ADM evaluation suite's ImageNet 256 reference batch: 'mu' and 'sigma' of
# the whole training set (and 10,000 images under 'arr_0').
ADM_IMAGENET256_REF_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
                           "ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz")

FEATURE_DIM = 2048
# Bumped whenever the pipeline from pixels to features changes, so that cached
# statistics from an older pipeline are not reused.
PIPELINE = "uint8/255 -> bilinear 299 (align_corners=False) -> 2x-1 -> pt_inception pool3, fp32"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
DATASETS = ("cifar10-train", "cifar10-test")
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "soflow" / "fid"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The FID Inception-v3
# ---------------------------------------------------------------------------
# The TF graph differs from torchvision's Inception-v3 in three places (the
# layers and their names are otherwise the same, so torchvision's blocks are
# reused and only the pooling branches are rewritten):
#  1. its 3x3 average pools (the pool branch of the A, C and E blocks) average
#     over the pixels inside the image only: count_include_pad=False;
#  2. the last E block (Mixed_7c) uses a 3x3 *max* pool in its pool branch;
#  3. the classifier has 1008 classes (unused for FID, but in the weights file).

def avg_pool_3x3(x):
    # TF's average pool ignores the zero padding: a border pixel is the mean of
    # its 6 (edge) or 4 (corner) in-image neighbours, not that sum over 9.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    """Mixed_5b/5c/5d: torchvision's InceptionA with the TF average pool."""

    def _forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(avg_pool_3x3(x))
        return [b1, b5, b3, bp]


class FIDInceptionC(InceptionC):
    """Mixed_6b..6e: torchvision's InceptionC with the TF average pool."""

    def _forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b77 = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b77 = conv(b77)
        bp = self.branch_pool(avg_pool_3x3(x))
        return [b1, b7, b77, bp]


class FIDInceptionE(InceptionE):
    """Mixed_7b (pool='avg', the TF average pool) and Mixed_7c (pool='max').

    The max pool in Mixed_7c is what the TF graph does (the Inception paper
    describes an average pool); FID numbers depend on it, so it is kept.
    """

    def __init__(self, in_channels, pool):
        super().__init__(in_channels)
        assert pool in ("avg", "max")
        self.pool = pool

    def _forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "avg":
            pooled = avg_pool_3x3(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return [b1, b3, bd, self.branch_pool(pooled)]


class FIDInception(nn.Module):
    """The TF Inception-v3 of FID: images in [0, 1] -> 2048-d pool features.

    Attribute names are those of torchvision's Inception3 (aux_logits=False),
    which is the key layout of the pt_inception-2015-12-05 weights file:
    Conv2d_1a_3x3.conv.weight, Conv2d_1a_3x3.bn.running_mean, ...,
    Mixed_7c.branch_pool.bn.weight, fc.weight (1008 x 2048), fc.bias.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)   # 299 -> 149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)            # -> 147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)             # after max pool: 73
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)           # -> 71
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)               # after max pool: 35
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)                                    # -> 17
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)                                    # -> 8
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # the ImageNet classifier; FID stops before it

    def forward(self, x):
        """x: (N, 3, H, W) float in [0, 1] -> (N, 2048) features."""
        # Preprocessing of pytorch-fid: bilinear resize to the 299 x 299 the
        # network was trained at, then [0, 1] -> [-1, 1], the TF graph's input range.
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # "pool_3" of the TF graph


def sha256_of(path):
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path, size, mtime_ns):  # hashed once per file version and process
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inception_weights(path=None):
    """The weights file: `path`, else $SOFLOW_FID_WEIGHTS, else the torch.hub
    cache (downloaded there on first use). Raises before any compute if it
    cannot be found or fetched."""
    path = path or os.environ.get(WEIGHTS_ENV)
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Inception weights file {path} does not exist (download it from {WEIGHTS_URL})")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME
    if cached.is_file():
        return cached
    log(f"downloading the FID Inception weights to {cached}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(WEIGHTS_URL, str(cached), hash_prefix=WEIGHTS_SHA256_PREFIX)
    except Exception as e:  # offline, proxy, disk full, wrong hash: the same advice
        raise FileNotFoundError(
            f"The FID Inception weights are missing and could not be downloaded ({type(e).__name__}: {e}).\n"
            f"Download {WEIGHTS_URL}\n"
            f"on a machine with internet and put it at {cached}\n"
            f"or pass --weights PATH (or set {WEIGHTS_ENV}=PATH)."
        ) from e
    return cached


def load_inception(weights=None, device="cpu"):
    """FIDInception with the weights file loaded (strict: every key must match),
    in eval mode, without gradients. `weights`: a path or None (see inception_weights)."""
    path = inception_weights(weights)
    with torch.device("meta"):  # no random init of 24M parameters only to overwrite them
        model = FIDInception()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True, assign=True)
    model.weights_sha256 = sha256_of(path)
    if not model.weights_sha256.startswith(WEIGHTS_SHA256_PREFIX):
        log(f"note: {path} is not the standard {WEIGHTS_FILENAME}; "
            "these FIDs are not comparable with published numbers")
    return model.eval().requires_grad_(False).to(device)


# ---------------------------------------------------------------------------
# Images: validated before any compute, then read batch by batch
# ---------------------------------------------------------------------------

class Images:
    """N uint8 images of shape (H, W, 3), read as (B, H, W, 3) uint8 tensors."""

    def __init__(self, name, n, batches, identity):
        self.name, self.n, self.identity = name, n, identity
        self._batches = batches  # (batch_size, num_workers) -> iterator of tensors

    def batches(self, batch_size, num_workers=0):
        return self._batches(batch_size, num_workers)


def check_images(x, name="images"):
    """Checks an in-memory image array: (N, H, W, 3), uint8, or float in [0, 1].
    Returns it as uint8 (floats are rounded to the 8 bits every image file has)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    _check_shape(x.shape, name)
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8 in [0, 255] or floats in [0, 1], got dtype {x.dtype}")
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo and hi <= 1.0):
        hint = " (images in [-1, 1]? map them with (x + 1) / 2)" if lo < 0 else ""
        raise ValueError(f"{name}: float images must lie in [0, 1]; got values in [{lo}, {hi}]{hint}")
    return np.round(x * 255).astype(np.uint8)


def _check_shape(shape, name):
    if len(shape) != 4 or shape[-1] != 3:
        hint = ""
        if len(shape) == 4 and shape[1] == 3:
            hint = " This looks like (N, 3, H, W); transpose it with x.transpose(0, 2, 3, 1)."
        elif len(shape) == 3 or (len(shape) == 4 and shape[-1] == 1):
            hint = " Grayscale images need 3 channels: np.repeat(x[..., None], 3, -1)."
        raise ValueError(f"{name}: expected images of shape (N, H, W, 3), got {tuple(shape)}.{hint}")
    if shape[0] < 2:
        raise ValueError(f"{name}: a covariance needs at least 2 images, got {shape[0]} "
                         "(FID-50K uses 50,000)")


def array_images(x, name="images", identity=None):
    x = check_images(x, name)

    def batches(batch_size, num_workers):
        for i in range(0, len(x), batch_size):
            yield torch.from_numpy(x[i:i + batch_size])
    return Images(name, len(x), batches, identity)


def npz_images(path):
    """The uint8 images under 'arr_0' of an .npz, streamed from the zip member
    batch by batch (50,000 ImageNet images are 10 GB), checked from the header."""
    path = Path(path)
    with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
    name = f"{path} ['arr_0']"
    _check_shape(shape, name)
    if dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 images in [0, 255] (the ADM .npz format), got dtype "
                         f"{dtype}. From floats in [0, 1]: (x * 255).round().clip(0, 255).astype(np.uint8)")
    n, img_shape = shape[0], shape[1:]
    st = path.stat()
    identity = {"npz": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def batches(batch_size, num_workers):
        if fortran_order:  # not what np.savez writes for a C array; read it whole
            x = np.ascontiguousarray(np.load(path)["arr_0"])
            yield from (torch.from_numpy(x[i:i + batch_size]) for i in range(0, n, batch_size))
            return
        with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
            np.lib.format.read_magic(f)
            read_header(f)
            for i in range(0, n, batch_size):
                b = min(batch_size, n - i)
                buf = f.read(b * int(np.prod(img_shape)))
                if len(buf) != b * int(np.prod(img_shape)):
                    raise ValueError(f"{name}: the file is truncated after {i} images")
                yield torch.from_numpy(np.frombuffer(buf, np.uint8).reshape(b, *img_shape).copy())
    return Images(name, n, batches, identity)


class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB")).copy())


def folder_images(path):
    """Every image file under a folder (recursively, sorted), decoded to RGB."""
    from PIL import Image
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if len(files) < 2:
        raise ValueError(f"{path}: a covariance needs at least 2 images, found {len(files)} image files "
                         f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    sizes = {}
    for p in files:  # headers only: cheap, and a mixed folder fails now rather than mid-run
        with Image.open(p) as im:
            sizes.setdefault(im.size, p)
    if len(sizes) > 1:
        examples = ", ".join(f"{p.name}: {w}x{h}" for (w, h), p in list(sizes.items())[:3])
        raise ValueError(f"{path}: all images must have the same size; found {len(sizes)} sizes ({examples})")
    digest = hashlib.sha256()
    for p in files:
        st = p.stat()
        digest.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    identity = {"folder": str(path.resolve()), "files": len(files), "digest": digest.hexdigest()}

    def batches(batch_size, num_workers):
        yield from torch.utils.data.DataLoader(_FolderDataset(files), batch_size=batch_size,
                                               num_workers=num_workers, shuffle=False)
    return Images(str(path), len(files), batches, identity)


def dataset_images(name, data_root="data"):
    """'cifar10-train' (the 50,000 training images: the FID reference of the
    CIFAR-10 literature) or 'cifar10-test', through torchvision."""
    from torchvision.datasets import CIFAR10
    train = name == "cifar10-train"
    try:
        data = CIFAR10(root=data_root, train=train, download=True).data  # uint8 (N, 32, 32, 3)
    except Exception as e:
        raise FileNotFoundError(
            f"CIFAR-10 is not under {data_root} and could not be downloaded ({type(e).__name__}: {e}). "
            f"Put cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) "
            f"or its extracted cifar-10-batches-py/ in {data_root}, or pass --data-root.") from e
    return array_images(data, name, identity={"dataset": name})


# ---------------------------------------------------------------------------
# Statistics and the Frechet distance
# ---------------------------------------------------------------------------

class Stats(NamedTuple):
    mu: np.ndarray        # (2048,)
    sigma: np.ndarray     # (2048, 2048)
    n: int | None         # number of images; None when unknown (ADM reference batches)


class fp32_exact:
    """Turns TF32 off inside (and restores the settings after).

    FID is a small difference of large terms, tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))
    over 2048 dimensions, so feature errors that look harmless move it. bf16
    keeps 8 bits of precision and TF32 11, at every operand of 94 convolutions;
    the shift they cause depends on the GPU, the kernels and the batch size,
    and is absent from the published numbers, which come from an fp32
    network. Hence fp32 features with TF32 off (and no autocast).
    """

    def __enter__(self):
        # PyTorch's default lets cuDNN run fp32 convolutions in TF32 on Ampere and later.
        cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
        self.new_api = cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision")
        if self.new_api:  # torch >= 2.9
            self.saved = (torch.backends.cuda.matmul.fp32_precision, cudnn_conv.fp32_precision)
            torch.backends.cuda.matmul.fp32_precision = "ieee"
            cudnn_conv.fp32_precision = "ieee"
        else:
            self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        if self.new_api:
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = self.saved
        else:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


@torch.no_grad()
def activations(images, model, batch_size=200, device=None, num_workers=0, progress=True):
    """Inception pool features of `images` (an Images, or an array accepted by
    check_images): float32 array (N, 2048)."""
    if not isinstance(images, Images):
        images = array_images(images)
    device = torch.device(device or next(model.parameters()).device)
    out = np.empty((images.n, FEATURE_DIM), dtype=np.float32)
    i = 0
    with fp32_exact(), torch.autocast(device.type, enabled=False), \
            tqdm(total=images.n, unit="img", desc=f"Inception features of {images.name}",
                 disable=not progress, file=sys.stderr) as bar:
        for batch in images.batches(batch_size, num_workers):
            x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
            out[i:i + len(batch)] = model(x).cpu().numpy()
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
        warnings.warn(f"FID from {len(act)} < {FEATURE_DIM} images: the covariance is rank-deficient and "
                      "FID is strongly biased; only FID-50K compares with published numbers", stacklevel=2)
    return Stats(act.mean(axis=0, dtype=np.float64), np.cov(act, rowvar=False), len(act))


def _joint_range(sigma1, sigma2, rank):
    """An orthonormal basis Q (d x rank) of range(sigma1) + range(sigma2), or
    None when these covariances do not fit in `rank` dimensions."""
    s = sigma1 / np.linalg.norm(sigma1) + sigma2 / np.linalg.norm(sigma2)
    omega = np.random.default_rng(0).standard_normal((len(s), rank))
    q = np.linalg.qr(s @ omega)[0]  # range(s omega) = range(s) when rank(s) <= rank
    for sig in (sigma1, sigma2):
        if np.linalg.norm(sig - q @ (q.T @ sig)) > 1e-9 * np.linalg.norm(sig):
            return None
    return q


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6, rank=None):
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with (S1 S2)^(1/2) from
    scipy.linalg.sqrtm, as in the TTUR / pytorch-fid / ADM implementations:
    if the product is too singular for a finite square root, warn and add
    eps to the diagonals; drop imaginary parts of round-off size.

    rank: an upper bound on rank(S1) + rank(S2) when known (n1 - 1 + n2 - 1
    for covariances of n1 and n2 images). When it is below the dimension the
    square root is taken in the subspace spanned by both covariances, where
    S1 S2 lives: the same trace, exactly, from a rank x rank sqrtm (a 2048 x
    2048 one takes tens of seconds on a 2-core CPU, and is ill-conditioned
    for so few images). FID-50K always takes the standard path.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    d = len(mu1)
    if mu1.shape != mu2.shape or mu1.ndim != 1 or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    s1, s2 = sigma1, sigma2
    if rank is not None and 0 < rank < d:
        q = _joint_range(sigma1, sigma2, rank)
        if q is not None:
            s1, s2 = q.T @ sigma1 @ q, q.T @ sigma2 @ q
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular product of covariances; adding {eps} to their diagonals", stacklevel=2)
        offset = eps * np.eye(len(s1))
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------------------
# Sources, statistics files and the cache
# ---------------------------------------------------------------------------

def save_statistics(path, stats, key=None):
    """Writes mu, sigma (the ADM reference format), n and the key (JSON) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, mu=stats.mu, sigma=stats.sigma, n=-1 if stats.n is None else stats.n,
             key=json.dumps(key or {}, sort_keys=True))
    os.replace(tmp, path)


def load_statistics(path):
    """(Stats, key dict) from an .npz with 'mu' and 'sigma' (ours or ADM's)."""
    with np.load(path, allow_pickle=False) as f:
        stats = Stats(f["mu"].astype(np.float64), f["sigma"].astype(np.float64),
                      int(f["n"]) if "n" in f.files and int(f["n"]) > 0 else None)
        key = json.loads(str(f["key"])) if "key" in f.files else {}
    d = stats.mu.shape
    if stats.mu.ndim != 1 or stats.sigma.shape != d + d:
        raise ValueError(f"{path}: 'mu' {stats.mu.shape} and 'sigma' {stats.sigma.shape} "
                         "are not a mean and its covariance")
    return stats, key


class Source(NamedTuple):
    name: str
    images: Images | None    # images to compute statistics from, or
    stats_file: Path | None  # a file of precomputed statistics


def open_source(spec, data_root="data"):
    """A dataset name, an .npz (images under 'arr_0', or 'mu' and 'sigma'), or
    an image folder; checked now, so that a bad input fails before any compute."""
    if isinstance(spec, str) and spec in DATASETS:
        return Source(spec, dataset_images(spec, data_root), None)
    if not isinstance(spec, (str, Path)):
        return Source("images", array_images(spec), None)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected an .npz, an image folder or one of {DATASETS})")
    if path.is_dir():
        return Source(str(path), folder_images(path), None)
    try:
        with zipfile.ZipFile(path) as z:
            keys = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not an .npz file (nor a folder, nor one of {DATASETS})") from None
    if "mu" in keys and "sigma" in keys:
        load_statistics(path)  # shapes checked now
        return Source(str(path), None, path)
    if "arr_0" in keys:
        return Source(str(path), npz_images(path), None)
    raise ValueError(f"{path} has neither images under 'arr_0' nor statistics 'mu' and 'sigma' (keys: {keys})")


def statistics(source, model, batch_size=200, device=None, num_workers=0, cache_dir=None, progress=True):
    """Stats of a Source (see open_source); model from load_inception (None
    only for a statistics file). Statistics computed from images are
    cached in cache_dir (None: no cache) under a key made of the source's
    identity (dataset name; file path, size and time; folder listing), the
    weights file's SHA-256 and the preprocessing, so that a changed source or
    another weights file never reuses them."""
    if source.stats_file is not None:
        stats, key = load_statistics(source.stats_file)
        if model is not None and key.get("weights_sha256") not in (None, model.weights_sha256):
            log(f"warning: {source.name} was computed with other Inception weights "
                f"(sha256 {key['weights_sha256'][:12]}...)")
        return stats
    key = {"source": source.images.identity, "weights_sha256": model.weights_sha256, "pipeline": PIPELINE}
    cache = None
    if cache_dir is not None and source.images.identity is not None:
        tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        label = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source.name).name)[:40]
        cache = Path(cache_dir) / f"{label}-{tag}.npz"
        if cache.is_file():
            stats, cached_key = load_statistics(cache)
            if cached_key == key:
                log(f"using cached statistics of {source.name}: {cache}")
                return stats
    act = activations(source.images, model, batch_size, device, num_workers, progress)
    stats = statistics_from_activations(act)
    if cache is not None:
        save_statistics(cache, stats, key)
        log(f"cached statistics of {source.name}: {cache}")
    return stats


def compute_fid(samples, ref, weights=None, batch_size=200, device=None, num_workers=0, data_root="data",
                cache_dir=DEFAULT_CACHE_DIR, progress=True):
    """FID of `samples` against `ref` (each: anything open_source takes, or a
    uint8 / [0, 1]-float array (N, H, W, 3)). Inputs are checked, and the
    weights found, before any compute."""
    sources = [open_source(s, data_root) for s in (samples, ref)]
    model = None
    if any(s.images is not None for s in sources):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_inception(weights, device)
    s1, s2 = (statistics(s, model, batch_size, device, num_workers, cache_dir, progress) for s in sources)
    rank = s1.n - 1 + s2.n - 1 if s1.n and s2.n else None
    return frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma, rank=rank)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description="FID with the TF Inception-v3 of the literature (pytorch-fid weights).")
    p.add_argument("source", help="samples: an .npz of uint8 images (N, H, W, 3) under 'arr_0', an image "
                                  "folder, an .npz of statistics, or " + " / ".join(DATASETS))
    p.add_argument("--ref", help=" / ".join(DATASETS) + ", an image folder, an .npz of images ('arr_0') or of "
                                 "statistics ('mu', 'sigma'), e.g. VIRTUAL_imagenet256_labeled.npz")
    p.add_argument("--save-stats", metavar="OUT.npz", help="write the statistics of SOURCE to OUT.npz "
                                                           "(usable as --ref) instead of computing a FID")
    p.add_argument("--weights", metavar="PATH", help=f"a local {WEIGHTS_FILENAME} (default: ${WEIGHTS_ENV}, "
                                                     "else the torch.hub cache, downloaded there on first use)")
    p.add_argument("--batch-size", type=int, default=200, help="(default: 200)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="(default: cuda if available, else cpu)")
    p.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="image-decoding processes for folders (default: min(8, CPUs))")
    p.add_argument("--data-root", default="data", help="where CIFAR-10 is, downloaded there if missing "
                                                       "(default: data)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                   help=f"statistics computed from images are cached here (default: {DEFAULT_CACHE_DIR})")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached statistics")
    args = p.parse_args(argv)
    if (args.ref is None) == (args.save_stats is None):
        p.error("give exactly one of --ref REF (compute a FID) and --save-stats OUT.npz")
    if args.batch_size < 1:
        p.error("--batch-size must be positive")
    cache_dir = None if args.no_cache else args.cache_dir
    opts = dict(batch_size=args.batch_size, device=args.device, num_workers=args.num_workers, cache_dir=cache_dir)

    if args.save_stats is not None:
        source = open_source(args.source, args.data_root)
        if source.images is None:
            p.error(f"{args.source} already holds statistics")
        model = load_inception(args.weights, args.device)
        stats = statistics(source, model, **opts)
        key = {"source": source.images.identity, "weights_sha256": model.weights_sha256, "pipeline": PIPELINE}
        save_statistics(args.save_stats, stats, key)
        print(f"wrote the statistics of {stats.n} images of {source.name} to {args.save_stats}")
        return None

    t0 = time.time()
    value = compute_fid(args.source, args.ref, weights=args.weights, data_root=args.data_root, **opts)
    log(f"computed in {time.time() - t0:.1f} s")
    print(f"FID: {value:.4f}")
    return value


if __name__ == "__main__":
    main()
