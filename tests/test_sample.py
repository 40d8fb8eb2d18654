"""Tests of sample.py on tiny networks: bare released files (named by --model) and our
checkpoints give the outputs of the networks they were made from (EMA or model weights),
through the samplers of soflow.py and a tiny random SD-VAE-like decoder; the .npz feeds
fid.py; images depend only on (seed, index), not on the batch size or the number of
processes (a two-process torchrun run included); the multi-step samplers; per-class grids;
and every bad input is refused with one line before any compute. The released models by
name, their config.yaml and fine-tuning from them: tests/test_released.py."""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
import dit
import fid
import sample
import soflow
import unet

# FID from a dozen images: fid.py warns that the covariance is rank-deficient
pytestmark = pytest.mark.filterwarnings("ignore:FID from")

ROOT = Path(__file__).resolve().parent.parent
DIT_ARGS = dict(input_size=8, num_classes=5)          # T/2 on 8x8x4 latents, 5 classes
UNET_ARGS = dict(img_resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                 attn_resolutions=[4], noise_channels=16, dropout=0.0, augment_dim=6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is as fast as two, and does not fight the other jobs
    of a shared machine for its cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(net, seed):
    """Random values of unit gain in every parameter: the initialisations of both
    networks zero their outputs (adaLN-Zero, 1e-5 convolutions), under which a wrong
    weight or a swapped EMA would go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name == "pos_embed":
                continue
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


def tiny_dit(seed, **kw):
    return randomize(dit.dit_from_name("T/2", **{**DIT_ARGS, **kw}), seed)


def tiny_unet(seed):
    return randomize(unet.UNet(**UNET_ARGS), seed)


def save_released(path, net, ema):
    """The released layout (the authors' train.py): a wrapper's state dicts, prefix 'network.'."""
    prefixed = lambda m: {f"network.{k}": v.clone() for k, v in m.state_dict().items()}
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    torch.save({"model": prefixed(net), "ema_model": prefixed(ema), "optimizer": opt.state_dict(),
                "finished_steps": 1000, "finished_epochs": 2}, path)
    return path


def save_project(path, net, ema, cfg, data, ema_dtype=torch.float32):
    """Our format (checkpoints.py): bare state dicts and the config to rebuild everything."""
    kind = "dit" if isinstance(net, dit.DiT) else "unet"
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    torch.save({"model": net.state_dict(),
                "ema": {k: v.to(ema_dtype) for k, v in ema.state_dict().items()},
                "optimizer": opt.state_dict(), "step": 123,
                "config": {"script": "train_imagenet" if kind == "dit" else "train_cifar",
                           "net": {"kind": kind, **net.config}, "soflow": cfg.to_dict(), "data": data,
                           "train": {"batch": 8, "lr": 1e-4, "ema_decay": 0.9999}},
                "rng": {"torch": torch.get_rng_state()}}, path)
    return path


def expected_uint8(x):
    """[-1, 1] -> uint8 (N, H, W, 3), written out here independently of checkpoints.to_uint8."""
    return np.clip(np.round((x.double().numpy() + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def assert_images_close(a, b):
    """uint8 images equal up to one level in a few pixels (float round-off between
    different batch shapes can move a value across a rounding boundary)."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


def load_npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny checkpoints of both layouts and a tiny random AutoencoderKL folder."""
    from diffusers import AutoencoderKL
    tmp = tmp_path_factory.mktemp("sample")
    torch.manual_seed(0)
    # 2x down-sampling, 4 latent channels: 8x8 latents -> 16x16 images, 16x16 -> 32x32
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=16)
    vae.save_pretrained(tmp / "vae")
    nets = {"dit": tiny_dit(1), "dit_ema": tiny_dit(2), "unet": tiny_unet(3), "unet_ema": tiny_unet(4)}
    save_released(tmp / "released_dit.pt", nets["dit"], nets["dit_ema"])
    save_released(tmp / "released_unet.pt", nets["unet"], nets["unet_ema"])
    dit_cfg = soflow.preset("imagenet", num_classes=5)
    save_project(tmp / "project_dit.pt", nets["dit"], nets["dit_ema"], dit_cfg,
                 {"kind": "latents", "image_size": 16, "vae": str(tmp / "vae"), "latent_scale": 0.18215,
                  "num_classes": 5})
    save_project(tmp / "project_unet.pt", nets["unet"], nets["unet_ema"], soflow.preset("cifar10"),
                 {"kind": "pixels", "dataset": "cifar10", "image_size": 8, "num_classes": None}, ema_dtype=torch.float64)
    return tmp, nets, vae.eval()


def run(argv, out):
    sample.main([*argv, "--out_dir", str(out)])
    return load_npz(Path(out) / "samples.npz")

# -----------------------------------------------------------------------------
# Checkpoints give the networks they were made from


def test_released_checkpoint_gives_its_network(files, tmp_path, capsys):
    tmp, nets, vae = files
    args = dict(model="T/2", net_args=DIT_ARGS)
    ema, cfg, data, _ = checkpoints.load_model(tmp / "released_dit.pt", "ema", **args)
    model, _, _, _ = checkpoints.load_model(tmp / "released_dit.pt", "model", **args)
    assert cfg == soflow.preset("imagenet_released", num_classes=5)      # the authors' imagenet.yaml
    assert data["kind"] == "latents" and data["latent_scale"] == 0.18215
    x1 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for loaded, source, other in ((ema, nets["dit_ema"], nets["dit"]), (model, nets["dit"], nets["dit_ema"])):
        want = soflow.sample(source, cfg, x1, y)
        assert torch.equal(soflow.sample(loaded, cfg, x1, y), want)
        assert (soflow.sample(other, cfg, x1, y) - want).abs().max() > 0.1   # the weights matter

    # the command line: latents of the EMA network, decoded by the VAE, as uint8
    n = 7
    got = run([str(tmp / "released_dit.pt"), "--model=T/2", f"--net_args={json.dumps(DIT_ARGS)}",
               "--vae", str(tmp / "vae"), "--num_samples", str(n), "--batch_size", "4", "--classes=4,1,3"],
              tmp_path)
    x1, _ = sample.image_noise(0, range(n), (4, 8, 8))
    labels = torch.tensor([[4, 1, 3][i % 3] for i in range(n)])
    with torch.no_grad():
        z = soflow.sample(nets["dit_ema"], cfg, x1, labels)
        want = expected_uint8(vae.decode(z / 0.18215).sample)
    assert got["arr_0"].shape == (n, 16, 16, 3)
    assert_images_close(got["arr_0"], want)
    assert got["arr_1"].tolist() == labels.tolist()
    # the throughput report and the grid (3 given classes: one row each, 7 // 3 = 2 images a row)
    out = capsys.readouterr().out
    assert "network (latents):" in out and "images/s" in out and "with VAE decode" in out
    report = json.loads((tmp_path / "samples.json").read_text())
    assert report["images_per_s_network"] > 0 and report["images_per_s_end_to_end"] > 0
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (3 * 34 + 2, 2 * 34 + 2, 3)                      # 16 -> 32 pixels, 2-pixel borders
    for c in range(3):                                                     # row c: images c and c + 3, class [4, 1, 3][c]
        for j in range(2):
            tile = got["arr_0"][c + 3 * j].repeat(2, 0).repeat(2, 1)        # each pixel drawn as 2 x 2
            assert np.array_equal(grid[2 + 34 * c:34 * (c + 1), 2 + 34 * j:34 * (j + 1)], tile)
    assert not list(tmp_path.glob(".samples.rank*"))                       # part files are gone


def test_released_unet_and_fp64_project_ema(files, tmp_path):
    tmp, nets, _ = files
    x1, _ = sample.image_noise(5, range(6), (3, 8, 8))
    cfg = soflow.preset("cifar10_released")
    want = {w: expected_uint8(soflow.sample(nets["unet" if w == "model" else "unet_ema"], cfg, x1)) for w in ("ema", "model")}
    common = ["--num_samples=6", "--batch_size=6", "--seed=5"]
    for w in ("ema", "model"):
        got = run([str(tmp / "released_unet.pt"), "--model=unet", f"--net_args={json.dumps(UNET_ARGS)}",
                   f"--weights={w}", *common], tmp_path / f"released_{w}")
        assert_images_close(got["arr_0"], want[w])
        assert "arr_1" not in got                                          # unconditional: no labels
        # the project checkpoint of the same networks, its EMA stored in float64
        got = run([str(tmp / "project_unet.pt"), f"--weights={w}", *common], tmp_path / f"project_{w}")
        assert_images_close(got["arr_0"], want[w])
    assert np.abs(want["ema"].astype(int) - want["model"]).mean() > 5      # the two weights differ


def test_project_checkpoint_ema_and_model_weights(files):
    tmp, nets, _ = files
    x1 = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([4, 3, 2, 1, 0])
    cfg = soflow.preset("imagenet", num_classes=5)
    for weights, source in (("ema", nets["dit_ema"]), ("model", nets["dit"])):
        net, got_cfg, data, desc = checkpoints.load_model(tmp / "project_dit.pt", weights)
        assert got_cfg == cfg and net.config == nets["dit"].config
        assert data["vae"] == str(tmp / "vae") and f"{weights} weights" in desc and "step 123" in desc
        for k, v in source.state_dict().items():
            assert torch.equal(net.state_dict()[k], v), k
        assert torch.equal(soflow.sample(net, cfg, x1, y), soflow.sample(source, cfg, x1, y))
    net, _, _, _ = checkpoints.load_model(tmp / "project_unet.pt", "ema")     # float64 EMA, cast exactly
    for k, v in nets["unet_ema"].state_dict().items():
        assert net.state_dict()[k].dtype == v.dtype and torch.equal(net.state_dict()[k], v), k


def test_state_dict_mismatch_is_named(files, tmp_path):
    tmp, nets, _ = files
    # a T/2 checkpoint read as T/4: patch size differs
    with pytest.raises(ValueError) as e:
        checkpoints.load_model(tmp / "released_dit.pt", model="T/4", net_args=DIT_ARGS)
    msg = str(e.value)
    assert "does not fit" in msg and "x_embedder.proj.weight: checkpoint (128, 4, 2, 2) vs network (128, 4, 4, 4)" in msg
    assert "'patch_size': 4" in msg and "\n" not in msg                   # the network it was read into; one line
    # the wrong number of classes
    with pytest.raises(ValueError, match=r"'num_classes': 1000.*y_embedder.embedding_table.weight: checkpoint "
                                         r"\(6, 128\) vs network \(1001, 128\)"):
        checkpoints.load_model(tmp / "released_dit.pt", model="T/2", net_args={"input_size": 8})
    # a U-Net checkpoint named as a DiT
    with pytest.raises(ValueError, match=r"missing: .*x_embedder.*unexpected: map_"):
        checkpoints.load_model(tmp / "released_unet.pt", model="T/2", net_args=DIT_ARGS)
    # our checkpoint whose keys kept a DDP prefix
    ckpt = torch.load(tmp / "project_unet.pt", weights_only=True)
    ckpt["ema"] = {f"module.{k}": v for k, v in ckpt["ema"].items()}
    torch.save(ckpt, tmp_path / "prefixed.pt")
    with pytest.raises(ValueError, match=r"does not fit.*unexpected: module\.map_"):
        checkpoints.load_model(tmp_path / "prefixed.pt")
    # not a checkpoint of either layout
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"neither our checkpoint .* nor a released one .*it has \['state_dict'\]"):
        checkpoints.load_model(tmp_path / "other.pt")

# -----------------------------------------------------------------------------
# sample.py -> .npz -> fid.py


def test_npz_feeds_fid_end_to_end(files, tmp_path, capsys):
    tmp, nets, vae = files
    dit16 = tiny_dit(7, input_size=16)                                      # 16x16 latents -> 32x32 images
    cfg = soflow.preset("imagenet", num_classes=5)
    save_project(tmp_path / "dit16.pt", dit16, dit16, cfg,
                 {"kind": "latents", "image_size": 32, "vae": str(tmp / "vae"), "latent_scale": 0.18215,
                  "num_classes": 5})
    n = 12
    got = run([str(tmp_path / "dit16.pt"), f"--num_samples={n}", "--batch_size=5", "--seed=3"], tmp_path / "s")
    # the images are the decoded 1-NFE samples with random classes from (seed, index)
    x1, _ = sample.image_noise(3, range(n), (4, 16, 16))
    y = torch.from_numpy(got["arr_1"])
    assert y.min() >= 0 and y.max() < 5 and len(set(y.tolist())) > 1
    assert torch.equal(y, sample.image_labels(3, range(n), "random", 5))
    with torch.no_grad():
        want = expected_uint8(vae.decode(soflow.sample(dit16, cfg, x1, y) / 0.18215).sample)
    assert got["arr_0"].shape == (n, 32, 32, 3)
    assert_images_close(got["arr_0"], want)

    # FID with random Inception weights (He-normal convolutions keep the features O(1))
    g = torch.Generator().manual_seed(0)
    sd = fid.FIDInception().state_dict()
    for k, v in sd.items():
        if k.endswith("conv.weight"):
            sd[k] = torch.randn(v.shape, generator=g) * math.sqrt(2 / v[0].numel())
    torch.save(sd, tmp_path / "inception.pth")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    common = ["--weights", str(tmp_path / "inception.pth"), "--device", "cpu", "--batch_size", "6",
              "--num_workers", "0", "--cache_dir", str(tmp_path / "cache")]
    samples = str(tmp_path / "s" / "samples.npz")
    fid.main(["--save_stats", str(tmp_path / "stats.npz"), samples, *common])
    with np.load(tmp_path / "stats.npz") as f:
        mu, sigma, count = f["mu"], f["sigma"], int(f["n"])
    model = fid.load_inception(str(tmp_path / "inception.pth"))
    with torch.no_grad():
        feats = model(torch.from_numpy(want).permute(0, 3, 1, 2).float() / 255).double().numpy()
    assert count == n and np.abs(feats).max() > 1e-2
    assert np.allclose(mu, feats.mean(0), rtol=1e-3, atol=1e-3 * np.abs(feats).max())
    assert fid.main([samples, "--ref", str(tmp_path / "stats.npz"), *common]) == pytest.approx(0, abs=1e-6)
    value = fid.main([samples, "--ref", str(tmp_path / "ref.npz"), *common])
    assert value > 1e-3 * np.trace(sigma) and np.isfinite(value)
    assert f"FID: {value:.4f}" in capsys.readouterr().out

# -----------------------------------------------------------------------------
# Determinism: (seed, index) -> image, whatever the batch size and the processes


def test_rank_batches_split_every_image_once_and_merge_in_order(tmp_path):
    for n, batch, world in ((10, 3, 1), (10, 3, 2), (10, 3, 5), (7, 8, 3), (50, 4, 8)):
        seen = [i for r in range(world) for b in sample.rank_batches(n, batch, r, world) for i in b]
        assert sorted(seen) == list(range(n))
        # each rank's part holds its batches in order, image i as the value i; the .npz is in index order
        parts = [np.array([i for b in sample.rank_batches(n, batch, r, world) for i in b], np.uint8).reshape(-1, 1, 1, 1)
                 for r in range(min(world, -(-n // batch)))]
        assert sample.write_npz(tmp_path / "x.npz", parts, n, batch, labels=range(n)) == (n, 1, 1, 1)
        got = load_npz(tmp_path / "x.npz")
        assert got["arr_0"].ravel().tolist() == list(range(n)) == got["arr_1"].tolist()


def test_image_noise_is_standard_normal_and_distinct_per_image():
    x1, extra = sample.image_noise(0, range(200), (4, 8, 8), renoise_steps=1)
    x = torch.cat([x1, extra[0]]).flatten(1)                                # 400 vectors of 256 values
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1) < 0.02
    corr = torch.corrcoef(x)
    off = corr[~torch.eye(len(x), dtype=torch.bool)]
    assert off.abs().max() < 0.35 and abs(off.mean()) < 0.01                 # independent of each other
    other, _ = sample.image_noise(1, range(200), (4, 8, 8))
    assert (other - x1).abs().mean() > 0.5                                   # the seed matters
    labels = sample.image_labels(0, range(2000), "random", 10)
    counts = torch.bincount(labels, minlength=10)
    assert labels.min() >= 0 and labels.max() < 10 and counts.min() > 150   # uniform over the classes
    assert sample.image_labels(0, range(5), "random", 10).tolist() == labels[:5].tolist()


def test_same_seed_same_images_any_batch_size(files, tmp_path):
    tmp, _, _ = files
    ckpt = str(tmp / "project_dit.pt")
    a = run([ckpt, "--num_samples=9", "--batch_size=4", "--seed=1"], tmp_path / "a")
    b = run([ckpt, "--num_samples=9", "--batch_size=9", "--seed=1"], tmp_path / "b")
    c = run([ckpt, "--num_samples=9", "--batch_size=4", "--seed=2"], tmp_path / "c")
    d = run([ckpt, "--num_samples=5", "--batch_size=2", "--seed=1"], tmp_path / "d")
    assert_images_close(a["arr_0"], b["arr_0"])
    assert np.array_equal(a["arr_1"], b["arr_1"])
    assert_images_close(a["arr_0"][:5], d["arr_0"])                         # a prefix of the same run
    assert np.abs(a["arr_0"].astype(int) - c["arr_0"]).mean() > 5           # another seed, other images
    # the noise of an image does not depend on the classes or the number of steps
    x_a, _ = sample.image_noise(1, [3, 4], (4, 8, 8))
    x_b, extra = sample.image_noise(1, range(6), (4, 8, 8), renoise_steps=2)
    assert torch.equal(x_a, x_b[3:5]) and len(extra) == 2 and not torch.equal(extra[0], extra[1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equal_one(files, tmp_path):
    tmp, _, _ = files
    argv = [str(tmp / "released_unet.pt"), "--model=unet", f"--net_args={json.dumps(UNET_ARGS)}",
            "--num_samples=11", "--seed=4", "--steps=2"]
    one = run([*argv, "--batch_size=4"], tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / "sample.py"),
                           *argv, "--batch_size=3", "--device=cpu", "--out_dir", str(tmp_path / "two")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    two = load_npz(tmp_path / "two" / "samples.npz")
    assert_images_close(one["arr_0"], two["arr_0"])
    assert not list((tmp_path / "two").glob(".samples.rank*"))

# -----------------------------------------------------------------------------
# Multi-step sampling


def test_renoise_matches_soflow_and_is_reproducible(files, tmp_path):
    tmp, nets, _ = files
    net, cfg = nets["unet_ema"], soflow.preset("cifar10_released")
    x1 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    times = [1.0, 0.6, 0.25, 0.0]
    want = soflow.sample_renoise(net, cfg, x1, times=times, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)                                    # the noises soflow drew, in order
    noise = [torch.randn(x1.shape, generator=g) for _ in range(len(times) - 2)]
    assert torch.equal(soflow.sample_renoise(net, cfg, x1, None, times=times, noise=noise), want)
    assert (want - soflow.sample_chain(net, cfg, x1, times=times)).abs().max() > 0.1

    common = [str(tmp / "project_unet.pt"), "--num_samples=6", "--batch_size=4", "--steps=3"]
    a = run([*common, "--seed=2"], tmp_path / "a")
    b = run([*common, "--seed=2", "--mode=renoise"], tmp_path / "b")
    c = run([*common, "--seed=3"], tmp_path / "c")
    assert np.array_equal(a["arr_0"], b["arr_0"])
    assert np.abs(a["arr_0"].astype(int) - c["arr_0"]).mean() > 5
    x1, noise = sample.image_noise(2, range(6), (3, 8, 8), renoise_steps=2)
    cfg = soflow.preset("cifar10")
    want = soflow.sample_renoise(net, cfg, x1, None, times=torch.linspace(1, 0, 4).tolist(), noise=noise)
    assert_images_close(a["arr_0"], expected_uint8(want))


def test_chain_equals_soflow_sample_chain(files, tmp_path):
    tmp, nets, vae = files
    cfg = soflow.preset("imagenet", num_classes=5)
    got = run([str(tmp / "project_dit.pt"), "--num_samples=5", "--batch_size=5", "--steps=3", "--mode=chain",
               "--classes=2"], tmp_path / "chain")
    x1, _ = sample.image_noise(0, range(5), (4, 8, 8))
    y = torch.full((5,), 2)
    with torch.no_grad():
        z = soflow.sample_chain(nets["dit_ema"], cfg, x1, y, steps=3)
        assert_images_close(got["arr_0"], expected_uint8(vae.decode(z / 0.18215).sample))
        # the null label ('no class') of a class-conditional model
        got = run([str(tmp / "project_dit.pt"), "--num_samples=5", "--batch_size=5", "--classes=null"],
                  tmp_path / "null")
        z = soflow.sample(nets["dit_ema"], cfg, x1, torch.full((5,), 5))
        assert_images_close(got["arr_0"], expected_uint8(vae.decode(z / 0.18215).sample))
        assert "arr_1" not in got
        # a time grid of one's own
        got = run([str(tmp / "project_dit.pt"), "--num_samples=5", "--batch_size=5", "--times=1,0.7,0",
                   "--mode=chain", "--classes=2"], tmp_path / "times")
        z = soflow.sample_chain(nets["dit_ema"], cfg, x1, y, times=[1, 0.7, 0])
        assert_images_close(got["arr_0"], expected_uint8(vae.decode(z / 0.18215).sample))

# -----------------------------------------------------------------------------
# Bad inputs: a clear message before any compute


@pytest.fixture
def no_compute(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("compute started before the inputs were checked")
    for module, name in ((sample, "image_noise"), (soflow, "sample_renoise"), (soflow, "sample_chain")):
        monkeypatch.setattr(module, name, refuse)


BAD = [  # (arguments after the checkpoint, which checkpoint, message)
    ([], "missing.pt", "missing.pt: no such checkpoint, nor the folder of a released configuration"),
    (["--model=XXL/2"], "released_dit.pt", r"argument --model: invalid choice: 'XXL/2' .*'unet'"),
    ([], "released_dit.pt", "released checkpoint outside its folder .*: name its configuration, --model one of"),
    (["--model=T/2"], "project_dit.pt", "project_dit.pt carries its config: --model and --net_args are for bare"),
    (["--classes=2,5"], "project_dit.pt", "class 5 is out of range for this model's 5 classes"),
    (["--classes=1,x"], "project_dit.pt", "expected random, all, null or class indices"),
    (["--classes=-1"], "project_dit.pt", "expected random, all, null or class indices"),
    (["--classes=3"], "project_unet.pt", "this model is unconditional"),
    (["--classes=random"], "project_unet.pt", "this model is unconditional"),
    (["--steps=0"], "project_unet.pt", "--steps 0: must be >= 1"),
    (["--mode=euler"], "project_unet.pt", r"argument --mode: invalid choice: 'euler'"),
    (["--times=1,0.5"], "project_unet.pt", "must decrease strictly from 1 to 0"),
    (["--times=1,0.2,0.5,0"], "project_unet.pt", "must decrease strictly from 1 to 0"),
    (["--times=1,a,0"], "project_unet.pt", "--times 1,a,0: could not convert"),
    (["--steps=3", "--times=1,0.5,0"], "project_unet.pt", "--steps 3 but --times has 2 steps"),
    (["--num_samples=0"], "project_unet.pt", "--num_samples 0: must be >= 1"),
    (["--batch_size=0"], "project_unet.pt", "--batch_size 0: must be >= 1"),
    (["--seed=-1"], "project_unet.pt", "--seed -1: must be >= 0"),
    (["--num-samples=3"], "project_unet.pt", "unrecognized arguments: --num-samples=3"),
    (["--net_args=[1]"], "released_unet.pt", r"--net_args \[1\]: must be a JSON object"),
    (["--net_args={depth: 2}"], "released_unet.pt", "argument --net_args: invalid loads value: '{depth: 2}'"),
    (["--model=unet", '--net_args={"depth": 2}'], "released_unet.pt", "net_args {'depth': 2}: .*unexpected keyword"),
    (["--model=unet", f"--net_args={json.dumps({**UNET_ARGS, 'model_channels': 8})}"], "released_unet.pt",
     r"'model_channels': 8.*shapes: map_layer0.weight: checkpoint \(64, 32\) vs network \(32, 32\).*\(\+\d+ more\)"),
]


@pytest.mark.parametrize("argv, ckpt, message", BAD)
def test_bad_input_is_one_line_before_compute(files, tmp_path, no_compute, capsys, argv, ckpt, message):
    tmp, _, _ = files
    with pytest.raises(SystemExit) as e:
        sample.main([str(tmp / ckpt), *argv, "--out_dir", str(tmp_path / "out")])
    text = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err
    assert e.value.code != 0 and re.search(message, text), text
    assert len(text.strip().splitlines()) == 1, text                       # one line, no traceback
    assert not (tmp_path / "out" / "samples.npz").exists()


def test_missing_vae_and_help(files, tmp_path, no_compute, capsys):
    tmp, _, _ = files
    with pytest.raises(SystemExit, match=r"^error: cannot load the VAE .*nope.*pass its path$"):
        sample.main([str(tmp / "project_dit.pt"), "--vae", str(tmp_path / "nope"), "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        sample.main(["--help"])
    assert e.value.code == 0 and "--num_samples" in capsys.readouterr().out
