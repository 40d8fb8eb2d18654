"""Tests of train_cifar.py on the CPU, on data made here in torchvision's on-disk formats
(CIFAR-10 pickles, MNIST idx files) and on scikit-learn's bundled digits, with tiny
U-Nets: the digits setting learns what a broken consistency loss cannot, the judge
against an independent computation, the digits preset's side-by-side comparison,
unconditional CIFAR-10 as before, MNIST and labelled CIFAR-10 read exactly, bit-identical
resumption with and without labels, the U-Net's label path against F.one_hot, the EDM-style
augmentation against the geometry it describes, and every bad input's one-line message."""

import functools
import math
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import soflow
import train_cifar
import trainer
import unet
from test_train import assert_same_state, error_of, load

UNET = ["--model_channels=16", "--channel_mult=(1,2)", "--num_blocks=1", "--noise_channels=16", "--emb_mult=1",
        "--progress=False", "--sample_every=0", "--augment_p=0.5", "--ema_every=2"]
MNIST = ["--dataset=mnist", "--xflip=0", "--channel_mult=(1,2,2)", "--attn_resolutions=(7,)"]     # 28, 14, 7
# the digits preset on a short budget: a smaller U-Net, fewer and smaller steps
DIGITS = ["--preset=digits", "--progress=False", "--compare=False", "--sample_every=0", "--model_channels=8",
          "--noise_channels=16", "--emb_mult=2", "--batch_size=64", "--steps=100", "--lr=3e-3", "--ema_decay=0.9"]

# ----------------------------------------------------------------------------- data in torchvision's formats


def write_cifar(root, per_batch=4, bad=False):
    """CIFAR-10 as torchvision stores it: cifar-10-batches-py/data_batch_1..5, test_batch,
    batches.meta (pickled dicts, images as uint8 rows of 3072 = 3 x 32 x 32)."""
    rng = np.random.default_rng(1)
    base = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(base, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3000 if bad and name == "data_batch_2" else 3072), dtype=np.uint8)
        with open(os.path.join(base, name), "wb") as f:
            pickle.dump({"batch_label": name, "labels": rng.integers(0, 10, per_batch).tolist(), "data": data,
                         "filenames": [f"{i}.png" for i in range(per_batch)]}, f)
    with open(os.path.join(base, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return root


def write_mnist(root, n=12, label_max=9):
    """MNIST as torchvision reads it: MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, the
    idx format (a big-endian magic 0x0803 or 0x0801, the sizes, then the bytes). Returns (images, labels)."""
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % (label_max + 1)).astype(np.uint8)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for split in ("train", "t10k"):
        with open(os.path.join(raw, f"{split}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">4i", 0x0803, n, 28, 28) + x.tobytes())
        with open(os.path.join(raw, f"{split}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">2i", 0x0801, n) + y.tobytes())
    return x, y


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """Fake CIFAR-10 (20 training images). torchvision checks the real files' MD5 sums;
    here it accepts any file that exists."""
    import torchvision.datasets.cifar as tvc
    monkeypatch.setattr(tvc, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    return write_cifar(str(tmp_path / "cifar"))


def run_cifar(root, out, *extra):
    return train_cifar.main([f"--data_dir={root}", f"--out_dir={out}", *UNET, "--batch_size=4", "--download=False",
                             *extra])


def broken_consistency(monkeypatch):
    """The consistency target without its Euler step: x_l = x_t (Eq. 14 with v = 0)."""
    real = soflow.scm_loss
    monkeypatch.setattr(soflow, "scm_loss", lambda net, cfg, x_t, t, l, s, y, v: real(net, cfg, x_t, t, l, s, y, 0 * v))

# ----------------------------------------------------------------------------- digits: learning and judging


def test_digits_learn_classes_that_a_broken_consistency_loss_cannot(tmp_path, monkeypatch):
    """The digits setting on a short budget: 1-NFE samples of each class that a classifier
    fitted on the real digits recognises. With x_l = x_t the consistency loss pulls the
    solution towards the identity (f(x, t, s) = f(x, s, s) = x), and the samples stay noise."""
    images, labels = train_cifar.load_data("digits", "", False, 0)
    x = images.float() / 8 - 1
    figures = {}
    for broken in (False, True):
        if broken:
            broken_consistency(monkeypatch)
        out = tmp_path / f"broken{broken}"
        train_cifar.main([*DIGITS, f"--out_dir={out}"])
        net, cfg, data, _ = train_cifar.checkpoints.load_model(str(out / "ckpt.pt"))
        assert cfg.guided and data["num_classes"] == 10
        figures[broken] = train_cifar.judge(net, cfg, x, labels, per_class=50)
    (good_acc, good_fd, _), (bad_acc, bad_fd, _) = figures[False], figures[True]
    assert good_acc >= 0.45 and bad_acc <= 0.25, figures             # measured: 0.62 and 0.09 (chance)
    assert good_fd < bad_fd / 2, figures


class Shows(torch.nn.Module):
    """A 'network' whose 1-NFE sample x1 - F(x1, 1, 0) is a given image of the asked class."""

    def __init__(self, images, labels):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.pick = [images[labels == c] for c in range(10)]

    def forward(self, x, t, s, y):
        count = torch.zeros(10, dtype=torch.long)
        out = []
        for c in y.tolist():
            out.append(self.pick[c][count[c] % len(self.pick[c])])
            count[c] += 1
        return x - torch.stack(out) + self.w


def test_judge_against_an_independent_computation():
    """Real digits as samples: the classifier recognises them; the Frechet distance and the within-class
    spread equal those computed here by an SVD and the eigenvalues of the covariances' product, and
    per-class covariance traces; noise fails the first two and has no spread at all."""
    images, labels = train_cifar.load_data("digits", "", False, 0)
    x = images.float() / 8 - 1
    cfg = soflow.preset("imagenet", num_classes=10)
    acc, fd, spread = train_cifar.judge(Shows(x, labels), cfg, x, labels, per_class=40)
    assert acc >= 0.98

    real = x.flatten(1).double().numpy()
    basis = np.linalg.svd(real - real.mean(0), full_matrices=False)[2][:20].T     # the 20 principal directions
    fake = torch.cat([x[labels == c][:40] for c in range(10)]).flatten(1).double().numpy()
    a, b = real @ basis, fake @ basis
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()   # tr sqrt(S1 S2): S1 S2 ~ an SPD matrix
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * root
    assert fd == pytest.approx(expected, rel=1e-6, abs=1e-9) and 0 < fd < 1
    within = lambda z, groups: np.mean([np.trace(np.cov(z[g], rowvar=False)) for g in groups])
    fake_groups, real_groups = [slice(40 * c, 40 * c + 40) for c in range(10)], [labels.numpy() == c for c in range(10)]
    assert spread == pytest.approx(within(b, fake_groups) / within(a, real_groups), rel=1e-6) and 0.5 < spread < 1.5

    noise = Shows(torch.zeros_like(x), labels)                   # F = x1: the sample is 0, all grey
    acc, fd, spread = train_cifar.judge(noise, cfg, x, labels, per_class=10)
    assert acc <= 0.3 and fd > 10 and spread < 1e-12


def test_digits_preset_compares_guidance_with_none(tmp_path, capsys):
    """--compare (the digits preset's): an unguided run first in no_guidance/, then this one;
    compare.png a row per class, both runs' figures printed; both checkpoints are ordinary."""
    out = tmp_path / "run"
    assert train_cifar.main([*DIGITS[:2], f"--out_dir={out}", "--steps=3", "--model_channels=8", "--log_every=1",
                             "--num_samples=20"]) == 3
    text = capsys.readouterr().out
    assert re.search(r"(?s)guidance \(w = 2, m = 1\), 1 NFE: class accuracy [01]\.\d+, Frechet distance \(PCA-20\) [\d.]+, "
                     r"within-class spread [\d.]+ .*"
                     r"no guidance \(w = 1, m = 1\), 1 NFE: class accuracy", text), text
    guided, plain = load(out / "ckpt.pt"), load(out / "no_guidance" / "ckpt.pt")
    assert guided["config"]["soflow"]["guidance_scale"] == 2.0 and plain["config"]["soflow"]["guidance_scale"] == 1.0
    assert plain["config"]["soflow"]["guidance_mix"] == 1.0 and plain["config"]["train"]["compare"] is False
    assert guided["config"]["data"] == {"kind": "pixels", "dataset": "digits", "image_size": 8, "channels": 1,
                                        "num_classes": 10, "num_items": 1797}
    assert guided["config"]["net"]["num_classes"] == 10 and guided["model"]["map_label.weight"].shape[1] == 10
    # a row per class: 2 x 2 samples and a gap, 8x8 images drawn 4 times larger with 2-pixel borders
    assert Image.open(out / "compare.png").size == (5 * 34 + 2, 10 * 34 + 2)
    assert {"samples_0000003.png", "loss.png", "log.csv"} <= set(os.listdir(out))
    assert Image.open(out / "samples_0000003.png").size == (2 * 34 + 2, 10 * 34 + 2)

# ----------------------------------------------------------------------------- CIFAR-10 and MNIST


def test_cifar_run_writes_checkpoint_with_float64_ema(cifar, tmp_path):
    out = tmp_path / "run"
    assert run_cifar(cifar, out, "--steps=4", "--micro_batch=2", "--log_every=2", "--sample_every=4",
                     "--num_samples=4") == 4
    assert {"ckpt.pt", "log.csv", "loss.png", "samples_0000004.png"} <= set(os.listdir(out))
    ck = load(out / "ckpt.pt")
    cfg = ck["config"]
    assert cfg["script"] == "train_cifar" and cfg["data"] == {"kind": "pixels", "dataset": "cifar10", "image_size": 32,
                                                               "channels": 3, "num_classes": None, "num_items": 20}
    net_cfg = dict(cfg["net"])
    assert net_cfg.pop("kind") == "unet" and net_cfg["num_classes"] == 0      # the released, unconditional layout
    net = unet.UNet(**net_cfg)
    net.load_state_dict(ck["model"], strict=True)
    net.load_state_dict(ck["ema"], strict=True)
    assert not any(k.startswith("map_label") for k in ck["model"])
    assert all(v.dtype == torch.float64 for v in ck["ema"].values())
    assert soflow.SoFlowConfig(**cfg["soflow"]) == soflow.preset("cifar10", total_steps=4)
    assert ck["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert cfg["train"]["optimizer"] == "radam"


def test_mnist_and_labelled_cifar_load_exactly_and_train_with_labels(cifar, tmp_path):
    """The images and labels of the files, read back independently; a class-conditional run
    on each gets a U-Net with num_classes from the data and a guided method."""
    x, y = write_mnist(str(tmp_path / "mnist"))
    images, labels = train_cifar.load_data("mnist", str(tmp_path / "mnist"), False, 0)
    assert images.dtype == torch.uint8 and torch.equal(images, torch.from_numpy(x)[:, None])
    assert labels.dtype == torch.long and labels.tolist() == y.tolist()
    rows, want = [], []
    for i in range(1, 6):
        with open(os.path.join(cifar, "cifar-10-batches-py", f"data_batch_{i}"), "rb") as f:
            d = pickle.load(f)
        rows.append(d["data"])
        want += d["labels"]
    images, labels = train_cifar.load_data("cifar10", cifar, False, 0)
    assert torch.equal(images, torch.from_numpy(np.concatenate(rows)).reshape(20, 3, 32, 32)) and labels.tolist() == want

    for data, extra in ((cifar, ["--dataset=cifar10"]), (str(tmp_path / "mnist"), MNIST)):
        out = tmp_path / extra[0][10:]
        run_cifar(data, out, "--steps=2", "--method=imagenet", "--guidance_scale=2", *extra)
        ck = load(out / "ckpt.pt")
        size, channels = (32, 3) if "cifar10" in extra[0] else (28, 1)
        assert ck["config"]["data"]["num_classes"] == 10 and ck["config"]["data"]["channels"] == channels
        assert ck["config"]["data"]["image_size"] == size and ck["config"]["net"]["num_classes"] == 10
        assert soflow.SoFlowConfig(**ck["config"]["soflow"]).guided and ck["model"]["map_label.weight"].shape == (32, 10)


def test_missing_and_malformed_data(tmp_path, monkeypatch):
    import torchvision
    import torchvision.datasets.cifar as tvc
    monkeypatch.setattr(tvc, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    with pytest.raises(SystemExit, match=r"(?s)CIFAR-10 is not in .*--download=False.*torchvision\.datasets\.CIFAR10\("):
        run_cifar(str(tmp_path / "none"), tmp_path / "o")
    with pytest.raises(SystemExit, match=r"(?s)MNIST is not in .*MNIST/raw/ \(--download=False\).*datasets\.MNIST\(.*"
                                         r"gunzip the four files of https://ossci-datasets"):
        run_cifar(str(tmp_path / "none"), tmp_path / "o", *MNIST)

    def offline(self):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(SystemExit, match=r"(?s)could not be downloaded \(OSError: no network\).*cifar-10-python\.tar\.gz"):
        train_cifar.main([f"--data_dir={tmp_path / 'none'}", f"--out_dir={tmp_path / 'o'}", *UNET, "--batch_size=4"])
    write_cifar(str(tmp_path / "bad"), bad=True)
    with pytest.raises(SystemExit, match=r"malformed CIFAR-10 in .*cifar-10-batches-py"):
        run_cifar(str(tmp_path / "bad"), tmp_path / "o")
    write_mnist(str(tmp_path / "badmnist"), label_max=12)                          # labels beyond the 10 classes
    with pytest.raises(SystemExit, match=r"malformed MNIST in .*MNIST/raw.*labels in \[0, 10\)"):
        train_cifar.load_data("mnist", str(tmp_path / "badmnist"), False, 0)
    write_cifar(str(tmp_path / "small"))
    with pytest.raises(SystemExit, match=r"cifar10 holds 20 images, fewer than --batch_size=32"):
        train_cifar.main([f"--data_dir={tmp_path / 'small'}", f"--out_dir={tmp_path / 'o'}", *UNET,
                          "--batch_size=32", "--download=False"])

# ----------------------------------------------------------------------------- resumption


def test_cifar_resume_is_bit_identical(cifar, tmp_path):
    """Dropout, augmentation, the float64 EMA every 2 steps and RAdam's state all resume exactly."""
    args = ["--steps=5", "--micro_batch=2", "--ckpt_every=0"]
    run_cifar(cifar, tmp_path / "full", *args)
    run_cifar(cifar, tmp_path / "cut", *args, "--stop_at=3")
    run_cifar(cifar, tmp_path / "cut", *args)
    a, b = load(tmp_path / "full" / "ckpt.pt"), load(tmp_path / "cut" / "ckpt.pt")
    assert_same_state(a, b)
    k = "dec.32x32_aux_conv.weight"          # (RAdam's first steps are plain momentum steps: tiny moves)
    assert not torch.equal(a["ema"][k], a["model"][k].double())


def test_class_conditional_resume_is_bit_identical(tmp_path):
    """Labels, label dropout, guidance's extra passes and 2 accumulation micro-steps resume exactly."""
    args = [*DIGITS, "--steps=5", "--batch_size=8", "--micro_batch=4", "--ckpt_every=0", "--dropout=0.1"]
    train_cifar.main([*args, f"--out_dir={tmp_path / 'full'}"])
    train_cifar.main([*args, f"--out_dir={tmp_path / 'cut'}", "--stop_at=2"])
    train_cifar.main([*args, f"--out_dir={tmp_path / 'cut'}"])
    a, b = load(tmp_path / "full" / "ckpt.pt"), load(tmp_path / "cut" / "ckpt.pt")
    assert_same_state(a, b)
    assert not torch.equal(a["ema"]["map_label.weight"], a["model"]["map_label.weight"])


def test_finetune_starts_from_the_source_weights(tmp_path, monkeypatch):
    """--init_from: step 0 holds the source's network and EMA weights, training moves them, and the
    source is recorded; a source that does not fit is one line naming the difference."""
    args = [*DIGITS, "--steps=2", "--batch_size=8"]
    train_cifar.main([*args, f"--out_dir={tmp_path / 'source'}"])
    source, seen = load(tmp_path / "source" / "ckpt.pt"), {}
    real_init = trainer.init_weights

    def init_weights(net, ema, src):
        real_init(net, ema, src)
        seen.update(model={k: v.clone() for k, v in net.state_dict().items()},
                    ema={k: v.clone() for k, v in ema.net.state_dict().items()})
    monkeypatch.setattr(trainer, "init_weights", init_weights)
    train_cifar.main([*args, f"--out_dir={tmp_path / 'tuned'}", f"--init_from={tmp_path / 'source' / 'ckpt.pt'}"])
    for which in ("model", "ema"):
        assert all(torch.equal(seen[which][k], v.to(seen[which][k].dtype)) for k, v in source[which].items())
    tuned = load(tmp_path / "tuned" / "ckpt.pt")
    assert tuned["config"]["train"]["init_from"].endswith("ckpt.pt") and tuned["step"] == 2
    assert not torch.equal(tuned["model"]["map_label.weight"], source["model"]["map_label.weight"])
    with pytest.raises(SystemExit, match=r"^error: --init_from=.*\['model'\] does not fit .*shapes: "):
        train_cifar.main([*args, "--model_channels=16", f"--out_dir={tmp_path / 'bad'}",
                          f"--init_from={tmp_path / 'source' / 'ckpt.pt'}"])

# ----------------------------------------------------------------------------- pieces


def test_label_path_equals_one_hot_without_a_host_sync():
    """The U-Net's class input is F.one_hot's vector without the null label's column, times
    sqrt(num_classes), bit for bit; a label outside [0, num_classes] is refused on the device."""
    torch.manual_seed(0)
    net = unet.UNet(img_resolution=8, in_channels=1, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                    attn_resolutions=(), noise_channels=16, num_classes=10, augment_dim=0)
    seen = []
    net.map_label.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    y = torch.tensor([0, 3, 9, 10, 10, 7])
    net(torch.randn(6, 1, 8, 8), torch.rand(6), torch.zeros(6), y)
    net(torch.randn(6, 1, 8, 8), torch.rand(6), torch.zeros(6))                   # y=None: the null label
    assert torch.equal(seen[0], F.one_hot(y, 11)[:, :10].float() * math.sqrt(10))
    assert torch.equal(seen[1], torch.zeros(6, 10))
    for bad in (11, -1):
        with pytest.raises(RuntimeError, match=r"class values must be in \[0, 10\]"):
            net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.zeros(2), torch.tensor([1, bad]))


def test_objective_feeds_each_image_its_augmentation_label_and_class(monkeypatch):
    """Both halves of the batch (flow matching, consistency) reach the network with the
    augmentation labels and classes of their own images, in every call soflow_loss makes."""
    torch.manual_seed(0)
    calls = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, s, y=None, augment_labels=None):
            calls.append((x.shape[0], augment_labels, y))
            return x * self.w

    images, classes = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8)
    seen = {}
    real_augment = train_cifar.augment

    def spy(x, p, xflip):
        out, lab = real_augment(x, p, xflip)
        seen["labels"] = lab
        return out, lab

    monkeypatch.setattr(train_cifar, "augment", spy)
    for labelled, cfg in ((False, soflow.preset("cifar10", total_steps=10)),           # lambda = 0.25: 2 + 6 images
                          (True, soflow.PRESETS["cifar10"].replace(num_classes=10, label_drop=0.0))):
        calls.clear()
        inputs = functools.partial(train_cifar.inputs, vmax=255, p=1.0, xflip=0.5, augment_labels=True,
                                   labelled=labelled)
        loss, logs = trainer.Objective(Probe(), cfg, inputs)(0, images, classes)
        lab = seen["labels"]
        assert [n for n, _, _ in calls] == [2, 6, 6]                 # FM forward, SCM forward, SCM target
        assert torch.equal(calls[0][1], lab[:2]) and torch.equal(calls[1][1], lab[2:]) and torch.equal(calls[2][1], lab[2:])
        classes_seen = [None if c[2] is None else c[2].tolist() for c in calls]
        assert classes_seen == ([[0, 1], list(range(2, 8)), list(range(2, 8))] if labelled else [None] * 3)
        assert {"loss", "fm_mse", "fm_weight", "scm_mse", "scm_weight"} == set(logs)
    assert torch.equal(train_cifar.inputs(torch.tensor([[[[0, 8, 16]]]], dtype=torch.uint8), None, 16, 0.0, 0.0,
                                          False, False)[0], torch.tensor([[[[-1.0, 0.0, 1.0]]]]))   # digits: 0..16

# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("arg, message", [
    ("--augment_p=1.5", r"--augment_p=1\.5: must be in \[0, 1\]"),
    ("--augment_dim=0", r"--augment_p > 0 needs the 6-dim augmentation label"),
    ("--dropout=2.0", r"dropout=2.0: must be in \[0, 1\)"),
    ("--dataset=svhn", r"argument --dataset: invalid choice: 'svhn'"),
    ("--num_classes=3", r"unrecognized arguments: --num_classes=3"),       # the data decide
    ("--compare=True", r"--compare=True compares a guided run .* --method=cifar10 trains without guidance"),
    ("--dataset=digits", r"--xflip=0\.5: a mirrored digit is not a digit; use --xflip=0 on digits"),
    ("--preset=digits --guidance_scale=0.5", r"guidance_scale = 0\.5: must be >= 1"),
    ("--preset=digits --channel_mult=(1,2,2,2,2)", r"the network: img_resolution=8 cannot be halved"),
])
def test_bad_config_values(tmp_path, capsys, arg, message):
    msg = error_of(train_cifar.main, [f"--data_dir={tmp_path}", f"--out_dir={tmp_path}", *UNET, "--batch_size=4",
                                      "--download=False", *arg.split()], capsys)
    assert re.search(message, msg) and len(msg.strip().splitlines()) == 1, msg
    assert not os.listdir(tmp_path)                                        # nothing written


# ----------------------------------------------------------------------------- augmentation


def ramp(n=2, size=32):
    """Images whose channels are the centered pixel coordinates: x (right), y (down)."""
    c = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    img = torch.stack([c[None, :].expand(size, size), c[:, None].expand(size, size), torch.zeros(size, size)])
    return img.expand(n, 3, size, size).clone()


def warp1(x, flip=0.0, scale=1.0, aniso=1.0, angle=0.0, tx=0.0, ty=0.0):
    n = x.shape[0]
    f = lambda v: torch.full((n,), float(v))
    return train_cifar.warp(x, f(flip), f(scale), f(aniso), f(angle), f(tx), f(ty))


def test_augmentation_geometry():
    x = ramp()
    X, Y = x[0, 0], x[0, 1]
    inner = lambda m, k: m[k:-k, k:-k]
    assert torch.equal(warp1(x), x)                                          # identity: untouched
    assert torch.equal(warp1(x, flip=1), x.flip(3))
    # translation by (2, -3) pixels: the content moves right by 2 and up by 3
    out = warp1(x, tx=2, ty=-3)
    torch.testing.assert_close(out[0, :, 4:-4, 4:-4], x[0, :, 7:-1, 2:-6], atol=1e-4, rtol=0)
    # zoom by 2 about the center: the pixel at p shows the point p / 2
    out = warp1(x, scale=2.0)
    torch.testing.assert_close(out[0, 0], X / 2, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, 1], Y / 2, atol=1e-4, rtol=0)
    # anisotropic, angle 0: stretched by 2 horizontally, squeezed by 2 vertically
    out = warp1(x, aniso=2.0)
    torch.testing.assert_close(out[0, 0], X / 2, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, 1, 8:24], Y[8:24] * 2, atol=1e-4, rtol=0)
    # angle pi / 2: the other way round
    out = warp1(x, aniso=2.0, angle=math.pi / 2)
    torch.testing.assert_close(out[0, 1], Y / 2, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, 0, :, 8:24], X[:, 8:24] * 2, atol=1e-4, rtol=0)
    # angle pi / 4 stretches along the diagonal (1, -1): the point p shows
    # p - (1 - 1/a) (p.d) d - (1 - a) (p.e) e with d = (1, -1)/sqrt 2, e = (1, 1)/sqrt 2, a = 1.5
    out = warp1(x, aniso=1.5, angle=math.pi / 4)
    pd, pe = (X - Y) / 2, (X + Y) / 2            # (p.d) d and (p.e) e have these coordinates
    qx = pd / 1.5 + pe * 1.5
    qy = -pd / 1.5 + pe * 1.5
    torch.testing.assert_close(inner(out[0, 0], 9), inner(qx, 9), atol=1e-4, rtol=0)
    torch.testing.assert_close(inner(out[0, 1], 9), inner(qy, 9), atol=1e-4, rtol=0)
    # composition: zoom by 2, then move right by 4
    out = warp1(x, scale=2.0, tx=4.0)
    torch.testing.assert_close(out[0, 0], (X - 4) / 2, atol=1e-4, rtol=0)


def test_augmentation_labels_and_probabilities():
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 8, 8) * 2 - 1
    out, lab = train_cifar.augment(x, p=0.0, xflip=0.5)                      # flips only
    assert lab.shape == (4000, 6) and (lab[:, 1:] == 0).all()
    flipped = lab[:, 0] == 1
    assert 0.45 < flipped.float().mean() < 0.55
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])
    out, lab = train_cifar.augment(x, p=0.12, xflip=0.0)
    assert (lab[:, 0] == 0).all()
    for cols in ([1], [2, 3], [4, 5]):                                       # each drawn with probability p
        drawn = (lab[:, cols] != 0).any(1).float().mean().item()
        assert abs(drawn - 0.12) < 0.025
    assert ((lab[:, 4] != 0) == (lab[:, 5] != 0)).all()                     # both translation coordinates together
    w = lab[:, 1][lab[:, 1] != 0]
    assert abs(w.mean().item()) < 0.2 and abs(w.std().item() - 1) < 0.15    # w ~ N(0, 1)
    untouched = (lab == 0).all(1)
    assert torch.equal(out[untouched], x[untouched])
    aniso = lab[:, 2:4][(lab[:, 2:4] != 0).any(1)]
    assert 0.35 < (aniso[:, 1] == 0).float().mean() < 0.65                  # angle 0 in half of the cases
