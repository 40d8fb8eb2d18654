"""Tests of fid.py: the Frechet distance against closed forms, the Inception
layout and its FID-specific blocks, the input checks, the cache, the authors'
reference batches from the Hugging Face hub (with the download replaced), the
command line end to end on tiny images with random Inception weights, and its
errors: one line, a non-zero exit, no traceback."""

import os
import pickle
import re
import subprocess
import sys
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image

import fid

# Tiny sample sets give rank-deficient covariances; fid.py warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:FID from")


# ---------------------------------------------------------------------------
# The Frechet distance
# ---------------------------------------------------------------------------

def random_cov(rng, d, scale=1.0):
    a = rng.standard_normal((d, 2 * d))
    return scale * a @ a.T / (2 * d)


def test_frechet_diagonal_and_commuting_closed_form():
    # Commuting covariances share eigenvectors U: (S1 S2)^(1/2) = U diag(sqrt(a b)) U^T,
    # so tr(S1 + S2 - 2 (S1 S2)^(1/2)) = sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(0)
    d = 40
    a, b = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    u = np.linalg.qr(rng.standard_normal((d, d)))[0]
    s1, s2 = u @ np.diag(a) @ u.T, u @ np.diag(b) @ u.T
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_non_commuting_2x2():
    # S1 S2 is similar to the PSD S1^(1/2) S2 S1^(1/2), with eigenvalues l1, l2 >= 0:
    # tr (S1 S2)^(1/2) = sqrt(l1) + sqrt(l2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert np.abs(s1 @ s2 - s2 @ s1).max() > 0.1  # they do not commute
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 0.5])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_zero_symmetric_nonnegative():
    rng = np.random.default_rng(1)
    d = 30
    for _ in range(5):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) * 0.1
        s1, s2 = random_cov(rng, d), random_cov(rng, d, scale=3.0)
        assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
        d12, d21 = fid.frechet_distance(mu1, s1, mu2, s2), fid.frechet_distance(mu2, s2, mu1, s1)
        assert d12 == pytest.approx(d21, rel=1e-9)
        assert d12 > 0
        # equal means: only the covariance term, still >= 0 up to round-off
        assert fid.frechet_distance(mu1, s1, mu1, s1 * (1 + 1e-6)) > -1e-9 * np.trace(s1)


def nuclear_fid(x1, x2):
    """FID of two feature sets with few samples, without a matrix square root:
    with centred features X1, X2, S1 S2 = X1^T (X1 X2^T) X2 / c has the nonzero
    eigenvalues of M M^T / c, M = X1 X2^T, c = (n1 - 1)(n2 - 1); so
    tr (S1 S2)^(1/2) is the nuclear norm of M over sqrt(c)."""
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    n1, n2 = len(x1), len(x2)
    tr_sqrt = np.linalg.norm(c1 @ c2.T, "nuc") / np.sqrt((n1 - 1) * (n2 - 1))
    diff = x1.mean(0) - x2.mean(0)
    return diff @ diff + (c1 ** 2).sum() / (n1 - 1) + (c2 ** 2).sum() / (n2 - 1) - 2 * tr_sqrt


def test_frechet_low_rank_subspace_matches_full_and_closed_form():
    rng = np.random.default_rng(2)
    d, n1, n2 = 150, 9, 12
    x1 = rng.standard_normal((n1, d)) * rng.uniform(0.5, 2, d)
    x2 = rng.standard_normal((n2, d)) + 0.3
    (m1, s1), (m2, s2) = [(x.mean(0), np.cov(x, rowvar=False)) for x in (x1, x2)]
    expected = nuclear_fid(x1, x2)
    reduced = fid.frechet_distance(m1, s1, m2, s2, rank=n1 + n2 - 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the full singular product may take the eps path
        full = fid.frechet_distance(m1, s1, m2, s2)
    assert reduced == pytest.approx(expected, rel=1e-7)  # sqrt of round-off at the zero eigenvalues
    assert full == pytest.approx(expected, rel=1e-4)
    # a wrong (too small) rank bound is detected and the full computation is used
    assert fid.frechet_distance(m1, s1, m2, s2, rank=5) == pytest.approx(full, rel=1e-12)
    # statistics_from_activations is mean and np.cov
    st = fid.statistics_from_activations(x1.astype(np.float32))
    assert st.n == n1 and np.allclose(st.mu, x1.astype(np.float32).mean(0), atol=1e-6)
    assert np.allclose(st.sigma, np.cov(x1.astype(np.float32), rowvar=False), atol=1e-6)


def test_frechet_singular_product_adds_eps_and_warns(monkeypatch):
    rng = np.random.default_rng(3)
    d, eps = 6, 1e-6
    a, b = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
    real_sqrtm, calls = fid.linalg.sqrtm, []

    def sqrtm_fails_once(m):  # what scipy returns for a too singular product
        calls.append(m.copy())
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)
    monkeypatch.setattr(fid.linalg, "sqrtm", sqrtm_fails_once)
    with pytest.warns(UserWarning, match="singular product"):
        value = fid.frechet_distance(np.zeros(d), np.diag(a), np.zeros(d), np.diag(b), eps=eps)
    assert len(calls) == 2 and np.allclose(calls[1], np.diag((a + eps) * (b + eps)))
    expected = a.sum() + b.sum() - 2 * np.sqrt((a + eps) * (b + eps)).sum()
    assert value == pytest.approx(expected, rel=1e-10)


def test_frechet_imaginary_parts(monkeypatch):
    d = 3
    monkeypatch.setattr(fid.linalg, "sqrtm", lambda m: np.eye(d) * (1 + 1e-9j))  # round-off: dropped
    assert fid.frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), np.eye(d)) == pytest.approx(0, abs=1e-12)
    monkeypatch.setattr(fid.linalg, "sqrtm", lambda m: np.eye(d) * (1 + 0.1j))  # not round-off: an error
    with pytest.raises(ValueError, match="imaginary"):
        fid.frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), np.eye(d))
    with pytest.raises(ValueError, match="do not match"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------
# The Inception network
# ---------------------------------------------------------------------------

def conv_shapes():
    """{name: (out, in, kh, kw)} of every conv of the TF Inception-v3 as laid
    out in pt_inception-2015-12-05, written from the architecture tables."""
    convs = {"Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3), "Conv2d_2b_3x3": (64, 32, 3, 3),
             "Conv2d_3b_1x1": (80, 64, 1, 1), "Conv2d_4a_3x3": (192, 80, 3, 3)}
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        convs.update({f"{name}.branch1x1": (64, cin, 1, 1), f"{name}.branch5x5_1": (48, cin, 1, 1),
                      f"{name}.branch5x5_2": (64, 48, 5, 5), f"{name}.branch3x3dbl_1": (64, cin, 1, 1),
                      f"{name}.branch3x3dbl_2": (96, 64, 3, 3), f"{name}.branch3x3dbl_3": (96, 96, 3, 3),
                      f"{name}.branch_pool": (pool, cin, 1, 1)})
    convs.update({"Mixed_6a.branch3x3": (384, 288, 3, 3), "Mixed_6a.branch3x3dbl_1": (64, 288, 1, 1),
                  "Mixed_6a.branch3x3dbl_2": (96, 64, 3, 3), "Mixed_6a.branch3x3dbl_3": (96, 96, 3, 3)})
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        convs.update({f"{name}.branch1x1": (192, 768, 1, 1), f"{name}.branch7x7_1": (c, 768, 1, 1),
                      f"{name}.branch7x7_2": (c, c, 1, 7), f"{name}.branch7x7_3": (192, c, 7, 1),
                      f"{name}.branch7x7dbl_1": (c, 768, 1, 1), f"{name}.branch7x7dbl_2": (c, c, 7, 1),
                      f"{name}.branch7x7dbl_3": (c, c, 1, 7), f"{name}.branch7x7dbl_4": (c, c, 7, 1),
                      f"{name}.branch7x7dbl_5": (192, c, 1, 7), f"{name}.branch_pool": (192, 768, 1, 1)})
    convs.update({"Mixed_7a.branch3x3_1": (192, 768, 1, 1), "Mixed_7a.branch3x3_2": (320, 192, 3, 3),
                  "Mixed_7a.branch7x7x3_1": (192, 768, 1, 1), "Mixed_7a.branch7x7x3_2": (192, 192, 1, 7),
                  "Mixed_7a.branch7x7x3_3": (192, 192, 7, 1), "Mixed_7a.branch7x7x3_4": (192, 192, 3, 3)})
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        convs.update({f"{name}.branch1x1": (320, cin, 1, 1), f"{name}.branch3x3_1": (384, cin, 1, 1),
                      f"{name}.branch3x3_2a": (384, 384, 1, 3), f"{name}.branch3x3_2b": (384, 384, 3, 1),
                      f"{name}.branch3x3dbl_1": (448, cin, 1, 1), f"{name}.branch3x3dbl_2": (384, 448, 3, 3),
                      f"{name}.branch3x3dbl_3a": (384, 384, 1, 3), f"{name}.branch3x3dbl_3b": (384, 384, 3, 1),
                      f"{name}.branch_pool": (192, cin, 1, 1)})
    return convs


def layout_state_dict(seed=0, num_batches_tracked=True):
    """A pt_inception-2015-12-05-shaped state dict with random values: He-normal
    convs and BN statistics that keep activations O(1) through the network."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in conv_shapes().items():
        fan_in = shape[1] * shape[2] * shape[3]
        sd[f"{name}.conv.weight"] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
        c = shape[0]
        sd[f"{name}.bn.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bn.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bn.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bn.running_var"] = 0.5 + torch.rand(c, generator=g)
        if num_batches_tracked:
            sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    sd["fc.weight"] = 0.01 * torch.randn(1008, 2048, generator=g)
    sd["fc.bias"] = torch.zeros(1008)
    return sd


def test_inception_accepts_pt_inception_layout_strictly():
    sd = layout_state_dict()
    assert len(conv_shapes()) == 94 and len(sd) == 94 * 6 + 2
    model = fid.FIDInception()
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.Mixed_7c.branch_pool.conv.weight, sd["Mixed_7c.branch_pool.conv.weight"])
    # a file without the num_batches_tracked counters (older PyTorch) loads as well
    no_counters = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    fid.FIDInception().load_state_dict(no_counters, strict=True)
    # and strictness is real: torchvision's auxiliary classifier or a missing key is refused
    with torch.device("meta"):
        empty = fid.FIDInception()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        empty.load_state_dict({**sd, "AuxLogits.fc.weight": torch.zeros(1008, 768)}, assign=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        empty.load_state_dict({k: v for k, v in sd.items() if k != "fc.bias"}, assign=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        empty.load_state_dict({**sd, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)},
                              assign=True)


def avg_pool_valid_only(x):
    """3x3 mean over the in-image neighbours only: a box sum divided by the count."""
    ones = torch.ones(1, 1, 3, 3)
    c = x.shape[1]
    box = F.conv2d(x, ones.expand(c, 1, 3, 3), padding=1, groups=c)
    count = F.conv2d(torch.ones(1, 1, *x.shape[2:]), ones, padding=1)
    return box / count


def max_pool_3x3(x):
    xp = F.pad(x, (1, 1, 1, 1), value=-float("inf"))
    return torch.stack([xp[..., i:i + x.shape[2], j:j + x.shape[3]] for i in range(3) for j in range(3)]).amax(0)


def pool_branch_width(block):
    return block.branch_pool.conv.out_channels


@pytest.mark.parametrize("make", [
    lambda: (torchvision.models.inception.InceptionA(192, 32), fid.FIDInceptionA(192, 32)),
    lambda: (torchvision.models.inception.InceptionC(768, 128), fid.FIDInceptionC(768, 128)),
    lambda: (torchvision.models.inception.InceptionE(1280), fid.FIDInceptionE(1280, pool="avg")),
])
def test_fid_blocks_average_pool_without_padding(make):
    torch.manual_seed(0)
    tv, ours = make()
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.eval(), ours.eval()
    x = torch.randn(2, tv.branch1x1.conv.in_channels, 6, 6)
    with torch.no_grad():
        y_tv, y = tv(x), ours(x)
        expected_pool = ours.branch_pool(avg_pool_valid_only(x))
    k = pool_branch_width(ours)
    assert torch.allclose(y[:, -k:], expected_pool, atol=1e-5)
    assert torch.allclose(y[:, :-k], y_tv[:, :-k], atol=1e-6)  # the other branches are torchvision's
    # count_include_pad only matters at the border: equal inside, different on the border
    inner = (slice(None), slice(-k, None), slice(1, -1), slice(1, -1))
    assert torch.allclose(y[inner], y_tv[inner], atol=1e-5)
    assert (y[:, -k:] - y_tv[:, -k:]).abs()[..., 0, :].max() > 1e-3


def test_fid_block_e2_uses_max_pool():
    torch.manual_seed(0)
    tv, ours = torchvision.models.inception.InceptionE(2048), fid.FIDInceptionE(2048, pool="max")
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.eval(), ours.eval()
    x = torch.randn(1, 2048, 4, 4)
    with torch.no_grad():
        y_tv, y = tv(x), ours(x)
        expected_pool = ours.branch_pool(max_pool_3x3(x))
    k = pool_branch_width(ours)
    assert torch.allclose(y[:, -k:], expected_pool, atol=1e-5)
    assert (y[:, -k:] - y_tv[:, -k:]).abs().max() > 1e-2  # torchvision averages
    assert torch.allclose(y[:, :-k], y_tv[:, :-k], atol=1e-6)


def test_network_uses_fid_blocks_everywhere():
    m = fid.FIDInception()
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        assert type(getattr(m, name)) is fid.FIDInceptionA
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        assert type(getattr(m, name)) is fid.FIDInceptionC
    assert (m.Mixed_7b.pool, m.Mixed_7c.pool) == ("avg", "max")
    assert m.fc.out_features == 1008


def bilinear_half_pixel(img, size):
    """Bilinear resize with half-pixel centres (align_corners=False, no antialias), by hand."""
    h, w = img.shape[-2:]

    def taps(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    y0, y1, fy = taps(size, h)
    x0, x1, fx = taps(size, w)
    rows = img[..., y0, :] * (1 - fy)[:, None] + img[..., y1, :] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


def test_network_input_is_299_bilinear_in_minus_one_one():
    model = fid.FIDInception().eval()
    seen = []

    class Stop(Exception):
        pass

    def record(module, inputs):
        seen.append(inputs[0])
        raise Stop
    model.Conv2d_1a_3x3.register_forward_pre_hook(record)
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64).float()
    with pytest.raises(Stop):
        model(x)
    expected = 2 * bilinear_half_pixel(x.double().numpy(), 299) - 1
    assert seen[0].shape == (2, 3, 299, 299)
    assert np.allclose(seen[0].numpy(), expected, atol=1e-5)


# ---------------------------------------------------------------------------
# Input checks: clear errors before any compute
# ---------------------------------------------------------------------------

@pytest.fixture
def no_compute(monkeypatch):
    def forward(self, x):
        raise AssertionError("the network ran before the input was checked")
    monkeypatch.setattr(fid.FIDInception, "forward", forward)


def images(seed, n, size=32, offset=0):
    """Structured uint8 images: colour gradients and blobs that vary between seeds."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        c = rng.uniform(0, 1, (3, 3))
        img = c[:, 0, None, None] * xx + c[:, 1, None, None] * yy + c[:, 2, None, None] * np.sin(
            rng.uniform(2, 12) * (xx + offset) + rng.uniform(0, 6))
        img = img - img.min() + 0.25 * rng.random((3, size, size))
        out.append((255 * img / img.max()).transpose(1, 2, 0))
    return np.round(out).astype(np.uint8)


def one_line_exit(argv, match):
    """fid.main ends with one line naming the problem: SystemExit(str), printed without a traceback."""
    with pytest.raises(SystemExit) as err:
        fid.main(argv)
    msg = err.value.code
    assert isinstance(msg, str) and "\n" not in msg and re.search(match, msg), msg
    return msg


@pytest.mark.parametrize("array, match", [
    (np.zeros((4, 32, 32), np.uint8), r"\(N, H, W, 3\).*Grayscale"),
    (np.zeros((4, 3, 32, 32), np.uint8), r"\(N, 3, H, W\); transpose"),
    (np.zeros((4, 32, 32, 4), np.uint8), r"expected images of shape \(N, H, W, 3\)"),
    (np.zeros((4, 32, 32, 3), np.float32), "expected uint8"),
    (np.zeros((1, 32, 32, 3), np.uint8), "at least 2 images"),
])
def test_bad_npz_is_refused_before_compute(tmp_path, no_compute, array, match):
    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=array)
    # checked before the weights are looked for
    one_line_exit([str(path), "--ref", str(path), "--weights", "/nonexistent.pth"], match)
    with pytest.raises(ValueError, match=match):
        fid.open_source(path)


def test_bad_sources_are_refused(tmp_path, no_compute):
    np.savez(tmp_path / "other.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"neither images under 'arr_0'.*'images'"):
        fid.open_source(tmp_path / "other.npz")
    (tmp_path / "not.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable .npz"):
        fid.open_source(tmp_path / "not.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fid.open_source(tmp_path / "missing.npz")
    np.savez(tmp_path / "stats.npz", mu=np.zeros(5), sigma=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="not a mean and its covariance"):
        fid.open_source(tmp_path / "stats.npz")
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(images(0, 1)[0]).save(folder / "a.png")
    with pytest.raises(ValueError, match="at least 2 images, found 1"):
        fid.open_source(folder)
    Image.fromarray(images(0, 1, size=16)[0]).save(folder / "b.png")
    with pytest.raises(ValueError, match="same size"):
        fid.open_source(folder)
    # the same through the command line: one line naming the file, on either side
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(tmp_path / "whole.npz", arr_0=images(0, 4))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:3000])   # an interrupted copy
    np.savez(tmp_path / "good.npz", mu=np.zeros(4), sigma=np.eye(4))
    for bad, match in (("other.npz", "neither images"), ("not.npz", "not a readable .npz"), ("empty.npz", "not a readable .npz"), ("cut.npz", "not a readable .npz"),
                       ("missing.npz", "does not exist"), ("stats.npz", "not a mean and its covariance"),
                       ("folder", "same size")):
        one_line_exit([str(tmp_path / bad), "--ref", "cifar10-test"], f"{bad}.*{match}")
        one_line_exit([str(tmp_path / "good.npz"), "--ref", str(tmp_path / bad)], f"{bad}.*{match}")


def test_bad_arrays_are_refused(no_compute):
    # arrays, like the .npz files, hold uint8 images (the ADM format); floats are refused with the conversion to use
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3))
    with pytest.raises(ValueError, match=r"got dtype float64; from floats in \[0, 1\]: np.round\(x \* 255\)"):
        fid.open_source(x)
    with pytest.raises(ValueError, match="dtype uint16"):
        fid.open_source(np.zeros((4, 8, 8, 3), np.uint16))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\); transpose"):
        fid.open_source(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    ok = np.round(x * 255).astype(np.uint8)
    src = fid.open_source(torch.from_numpy(ok))     # numpy or torch, read as they are
    assert src.n == 4 and src.identity is None and np.array_equal(torch.cat(list(src.batches(3))).numpy(), ok)


def test_missing_weights_offline_says_where_to_get_them(tmp_path, monkeypatch, no_compute, capsys):
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    np.savez(tmp_path / "s.npz", arr_0=images(0, 3))
    msg = one_line_exit([str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"), "--no_cache"], "weights")
    for part in (fid.WEIGHTS_URL, str(tmp_path / "hub" / "checkpoints" / fid.WEIGHTS_FILENAME),
                 "--weights", fid.WEIGHTS_ENV, "no network"):
        assert part in msg
    with pytest.raises(FileNotFoundError, match="the FID Inception weights are missing"):
        fid.load_inception()
    one_line_exit([str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"), "--weights", "nope.pth"],
                  "nope.pth does not exist")
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "env.pth"))
    one_line_exit([str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz")], "env.pth does not exist")
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:     # argparse's own errors: one line too, exit status 2
        fid.main([str(tmp_path / "s.npz")])
    text = capsys.readouterr().err
    assert err.value.code == 2 and text.count("\n") == 1 and "exactly one of --ref REF" in text and "--save_stats" in text


def test_damaged_or_foreign_weights_files_are_one_line_errors(tmp_path, no_compute):
    np.savez(tmp_path / "s.npz", arr_0=images(0, 3))
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save(layout_state_dict(), tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:5000])
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "other.pth")
    for name in ("empty.pth", "cut.pth", "other.pth"):
        one_line_exit([str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"), "--weights", str(tmp_path / name),
                       "--no_cache"], f"{name} is not a readable {fid.WEIGHTS_FILENAME}.*{re.escape(fid.WEIGHTS_URL)}")


@pytest.mark.parametrize("args, match", [
    (["--batch_size=0"], r"--batch_size=0 must be >= 1"),
    (["--num_workers=-1"], r"--num_workers=-1 >= 0"),
    (["--batch_size=two"], r"--batch_size: invalid int value: 'two'"),
    (["--device=gpu7"], r"--device=gpu7: use cpu"),
    (["--device=cuda:x"], r"--device=cuda:x: use cpu"),
    (["--device=cuda"] if not torch.cuda.is_available() else ["--device=cuda:99"], r"--device=cuda"),
    (["--bogus=1"], r"unrecognized arguments: --bogus=1"),
    (["--batch-size=4"], r"unrecognized arguments: --batch-size=4"),      # one spelling: underscores
])
def test_bad_options_are_one_line(tmp_path, args, match, capsys, no_compute):
    np.savez(tmp_path / "s.npz", arr_0=images(0, 3))
    if args == ["--device=cuda:99"]:
        pytest.skip("a machine with CUDA: a missing device index fails only when used")
    with pytest.raises(SystemExit) as err:
        fid.main([str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"), *args])
    assert err.value.code == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and re.search(match, err_text) and "--help" in err_text, err_text


def test_help_and_a_missing_file(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as err:
        fid.main(["--help"])
    out = capsys.readouterr().out
    assert err.value.code == 0 and "--save_stats" in out and "--batch_size" in out and "--data_root" in out
    monkeypatch.chdir(tmp_path)
    one_line_exit(["missing.npz", "--ref", "X"], r"^fid.py: error: missing.npz does not exist")


def test_command_line_errors_in_real_processes(tmp_path):
    """What a user sees, in a process of its own: weights that cannot be downloaded and a reference
    that cannot be fetched from the hub are one line each, exit 1, no traceback. The processes run side by side (each spends seconds importing torch)."""
    np.savez(tmp_path / "s.npz", arr_0=images(0, 3))
    offline = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
               "SOFLOW_FID_WEIGHTS": ""}
    runs = [["s.npz", "--ref", "s.npz", "--no_cache"], ["s.npz", "--ref", "Ref/cifar10.npz"]]
    procs = [subprocess.Popen([sys.executable, str(Path(fid.__file__)), *args], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **offline})
             for args in runs]
    errors = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, errors):
        assert p.returncode == 1 and "Traceback" not in err, err
    weights, hub = (err.strip().splitlines() for _, err in errors)
    assert len(weights) == 1 and "the FID Inception weights are missing and could not be downloaded" in weights[0]
    assert fid.WEIGHTS_URL in weights[0] and "--weights" in weights[0] and fid.WEIGHTS_ENV in weights[0]
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / fid.WEIGHTS_FILENAME) in weights[0]
    assert len(hub) == 1 and "Ref/cifar10.npz: could not fetch Ref/cifar10.npz from the Hugging Face " \
        "repository zlab-princeton/SoFlow" in hub[0]
    assert "https://huggingface.co/zlab-princeton/SoFlow/resolve/main/Ref/cifar10.npz" in hub[0]


# ---------------------------------------------------------------------------
# CIFAR-10 through torchvision (fake pickles)
# ---------------------------------------------------------------------------

def test_cifar10_train_images(tmp_path, monkeypatch):
    root = tmp_path / "data"
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    imgs = images(5, 6)
    # torchvision's layout: 5 training pickles + a test pickle, rows of 3072 bytes in CHW order
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rows = imgs[i:i + 1].transpose(0, 3, 1, 2).reshape(1, -1)
        with open(base / name, "wb") as f:
            pickle.dump({"data": rows, "labels": [i]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(k) for k in range(10)]}, f)
    # the md5 checks cannot pass on fake files: accept any file that exists
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    src = fid.open_source("cifar10-train", data_root=str(root))
    assert src.n == 5 and src.identity == {"dataset": "cifar10-train"}
    got = torch.cat(list(src.batches(2))).numpy()
    assert np.array_equal(got, imgs[:5])
    # missing and not downloadable: the error says what to put where

    def offline(self):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python.tar.gz.*--data_root"):
        fid.open_source("cifar10-train", data_root=str(tmp_path / "empty"))


# ---------------------------------------------------------------------------
# The statistics cache (with a cheap stand-in for the network)
# ---------------------------------------------------------------------------

class StubNet(nn.Module):
    """A cheap feature map with the interface statistics() needs."""

    def __init__(self, sha):
        super().__init__()
        self.proj = nn.Linear(48, fid.FEATURE_DIM)
        self.weights_sha256 = sha
        self.calls = 0

    def forward(self, x):
        self.calls += len(x)
        return self.proj(F.adaptive_avg_pool2d(x, 4).flatten(1))


def test_statistics_cache_is_keyed_by_source_and_weights(tmp_path, capsys):
    torch.manual_seed(0)
    net, other = StubNet("a" * 64), StubNet("b" * 64)
    cache = tmp_path / "cache"
    path = tmp_path / "s.npz"
    np.savez(path, arr_0=images(0, 5))

    def stats(model):
        return fid.statistics(fid.open_source(path), model, batch_size=2, cache_dir=cache, progress=False)[0]
    first = stats(net)
    assert net.calls == 5 and len(list(cache.glob("*.npz"))) == 1
    again = stats(net)
    assert net.calls == 5 and np.array_equal(again.sigma, first.sigma) and again.n == 5  # reused
    stats(other)
    assert other.calls == 5  # other weights: not reused
    np.savez(path, arr_0=images(1, 5))  # same path, new content
    changed = stats(net)
    assert net.calls == 10 and not np.allclose(changed.mu, first.mu)
    # a cache file whose stored key is not the current one is not trusted
    entry = max(cache.glob("s_npz-*.npz"), key=lambda p: p.stat().st_mtime_ns)
    st, key = fid.load_statistics(entry)
    fid.save_statistics(entry, st, {**key, "pipeline": "something else"})
    stats(net)
    assert net.calls == 15
    fid.statistics(fid.open_source(path), net, batch_size=2, cache_dir=None, progress=False)
    assert net.calls == 20  # no cache
    # a statistics file records its weights; used with others, it is flagged
    fid.save_statistics(tmp_path / "ref_stats.npz", first, {"weights_sha256": net.weights_sha256})
    ref = fid.open_source(tmp_path / "ref_stats.npz")
    assert ref == tmp_path / "ref_stats.npz"                  # a statistics file, not images
    capsys.readouterr()
    loaded, key = fid.statistics(ref, net)
    assert key == {"weights_sha256": net.weights_sha256}
    assert np.array_equal(loaded.sigma, first.sigma) and loaded.n == 5
    assert "other Inception weights" not in capsys.readouterr().err
    fid.statistics(ref, other)
    assert "computed with other Inception weights" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# End to end: the command line with random Inception weights
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fid_e2e")
    samples, refs = images(10, 5), images(20, 5, offset=0.5)
    np.savez(tmp / "samples.npz", arr_0=samples)
    np.savez_compressed(tmp / "ref.npz", arr_0=refs)  # a compressed member is streamed as well
    (tmp / "ref").mkdir()
    for i, img in enumerate(refs):
        Image.fromarray(img).save(tmp / "ref" / f"{i:03d}.png")
    torch.save(layout_state_dict(seed=0), tmp / "weights0.pth")
    return tmp, samples, refs


def count_images(monkeypatch):
    counter = {"n": 0}
    forward = fid.FIDInception.forward

    def counting(self, x):
        counter["n"] += len(x)
        return forward(self, x)
    monkeypatch.setattr(fid.FIDInception, "forward", counting)
    return counter


def test_command_line_end_to_end(e2e, monkeypatch, capsys):
    tmp, samples, refs = e2e
    seen = count_images(monkeypatch)
    common = ["--weights", str(tmp / "weights0.pth"), "--cache_dir", str(tmp / "cache"), "--device", "cpu",
              "--batch_size=4", "--num_workers", "0"]

    # samples.npz against an image folder
    value = fid.main([str(tmp / "samples.npz"), "--ref", str(tmp / "ref"), *common])
    out = capsys.readouterr()
    assert seen["n"] == 10
    assert re.search(r"FID: (\S+)", out.out).group(1) == f"{value:.4f}"
    assert f"is not {fid.WEIGHTS_FILENAME}" in out.err  # random weights are flagged as such
    # the same number from features computed here and a formula without sqrtm
    model = fid.FIDInception().eval()
    model.load_state_dict(torch.load(tmp / "weights0.pth", weights_only=True))
    with torch.no_grad():
        f_s, f_r = (model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).numpy() for x in (samples, refs))
    assert value == pytest.approx(nuclear_fid(f_s, f_r), rel=1e-4)
    assert value > 1e-3 * np.trace(np.cov(f_s, rowvar=False))  # different sets: far from 0
    seen["n"] = 0

    # again: both statistics come from the cache
    assert fid.main([str(tmp / "samples.npz"), "--ref", str(tmp / "ref"), *common]) == value
    assert seen["n"] == 0 and capsys.readouterr().err.count("using cached statistics") == 2

    # against the same images in an ADM-style reference .npz ('arr_0')
    v_npz = fid.main([str(tmp / "samples.npz"), "--ref", str(tmp / "ref.npz"), *common])
    assert seen["n"] == 5 and v_npz == pytest.approx(value, rel=1e-6)
    seen["n"] = 0

    # --save_stats, then a reference .npz of statistics ('mu', 'sigma')
    fid.main(["--save_stats", str(tmp / "ref_stats.npz"), str(tmp / "ref"), *common])
    with np.load(tmp / "ref_stats.npz") as f:
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048) and int(f["n"]) == 5
        assert np.allclose(f["mu"], f_r.mean(0), atol=1e-5)
    v_stats = fid.main([str(tmp / "samples.npz"), "--ref", str(tmp / "ref_stats.npz"), *common])
    assert seen["n"] == 0 and v_stats == pytest.approx(value, rel=1e-9)


# ---------------------------------------------------------------------------
# The authors' reference batches on the Hugging Face hub (the download replaced)
# ---------------------------------------------------------------------------

def test_ref_names_a_released_reference_batch_fetched_from_the_hub(e2e, monkeypatch, capsys, tmp_path):
    import huggingface_hub
    tmp, samples, refs = e2e
    common = ["--weights", str(tmp / "weights0.pth"), "--device", "cpu", "--batch_size=4", "--num_workers=0",
              f"--cache_dir={tmp_path / 'cache'}"]
    expected = fid.main([str(tmp / "samples.npz"), "--ref", str(tmp / "ref.npz"), *common])
    fid.main(["--save_stats", str(tmp_path / "stats.npz"), str(tmp / "ref.npz"), *common])
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        """Writes the file as the hub cache would hold it: images under 'arr_0' (Ref/cifar10.npz),
        or an ADM-style reference batch with 'mu' and 'sigma'."""
        calls.append((repo_id, filename))
        path = tmp_path / "hub" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            if filename.endswith("cifar10.npz"):
                np.savez(path, arr_0=refs)
            else:
                with np.load(tmp_path / "stats.npz") as f:
                    np.savez(path, mu=f["mu"], sigma=f["sigma"], arr_0=refs)
        return str(path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.chdir(tmp_path)
    for ref in ("zlab-princeton/SoFlow/Ref/cifar10.npz", "Ref/cifar10.npz"):
        assert fid.main([str(tmp / "samples.npz"), "--ref", ref, *common]) == pytest.approx(expected, rel=1e-6)
    # ADM's reference batch: its statistics are used as they are (no image count: FID-50K's full sqrtm,
    # too slow for the suite, so the source is checked rather than a FID computed)
    stats_file = fid.open_source("Ref/VIRTUAL_imagenet256_labeled.npz")
    assert stats_file == tmp_path / "hub" / "Ref" / "VIRTUAL_imagenet256_labeled.npz"
    stats, _ = fid.statistics(stats_file, None)
    with np.load(tmp_path / "stats.npz") as f:
        assert np.array_equal(stats.mu, f["mu"]) and stats.n is None
    assert calls == [("zlab-princeton/SoFlow", "Ref/cifar10.npz"), ("zlab-princeton/SoFlow", "Ref/cifar10.npz"),
                     ("zlab-princeton/SoFlow", "Ref/VIRTUAL_imagenet256_labeled.npz")]
    # a local file of that name (a clone of the repository) is used as it is, without a download
    (tmp_path / "Ref").mkdir(exist_ok=True)
    np.savez(tmp_path / "Ref" / "cifar10.npz", arr_0=refs)
    fid.main([str(tmp / "samples.npz"), "--ref", "Ref/cifar10.npz", *common])
    assert len(calls) == 3
    # other names never reach the hub
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fid.open_source("someone/else/Ref/x.npz")
    assert len(calls) == 3

    def offline(repo_id, filename, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot find the requested files in the cache\nand "
                                                             "outgoing traffic has been disabled.")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    msg = one_line_exit([str(tmp / "samples.npz"), "--ref", "zlab-princeton/SoFlow/Ref/nope.npz", *common],
                        r"zlab-princeton/SoFlow/Ref/nope.npz: could not fetch Ref/nope.npz .*LocalEntryNotFoundError")
    assert "https://huggingface.co/zlab-princeton/SoFlow/resolve/main/Ref/nope.npz" in msg

    def missing(repo_id, filename, **kwargs):
        raise huggingface_hub.errors.EntryNotFoundError(f"{filename} is not in {repo_id}")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    one_line_exit([str(tmp / "samples.npz"), "--ref", "Ref/missing.npz", *common], "Ref/missing.npz is not in")


def test_fp32_exact_turns_tf32_off_and_restores_the_settings():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "tf32"
    try:
        with fid.fp32_exact():
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
            assert not torch.backends.cuda.matmul.allow_tf32
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        with pytest.raises(KeyError), fid.fp32_exact():
            raise KeyError("restored on errors as well")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    finally:
        conv.fp32_precision, matmul.fp32_precision = before
