"""Tests of prepare_imagenet.py on a tiny image folder encoded by a tiny, randomly
initialised diffusers AutoencoderKL: the ADM center crop against crops computed here,
the stored posterior mean and std against direct encodings, labels, flipped entries,
resumption (done chunks are skipped, missing ones redone) and the error messages."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import prepare_imagenet as P

SIZE = 16


def make_vae(path):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                        norm_num_groups=4, sample_size=SIZE)
    vae.save_pretrained(path)
    return vae.eval()


# (class, file, width, height): short sides of exactly SIZE need no resizing, so their
# crop is plain slicing; the others are resized (one is halved by the box filter first)
IMAGES = [("ant", "a.png", 16, 24), ("ant", "b.png", 30, 16), ("ant", "c.png", 16, 16),
          ("bee", "d.png", 40, 64), ("bee", "e.png", 21, 18), ("bee", "f.jpg", 16, 19)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    rng = np.random.default_rng(0)
    arrays = {}
    for cls, name, w, h in IMAGES:
        os.makedirs(root / "train" / cls, exist_ok=True)
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(a)
        if name == "e.png":
            img = img.convert("L")                   # a greyscale image among colour ones
            a = np.asarray(img.convert("RGB"))
        img.save(root / "train" / cls / name, quality=95)
        arrays[name] = np.asarray(Image.open(root / "train" / cls / name).convert("RGB"))
    vae = make_vae(root / "vae")
    return root, arrays, vae


def expected_crop(a, size):
    """The ADM crop, written from its description: halve (box) while the short side is
    >= 2 size, resize the short side to `size` (bicubic), take the central square."""
    img = Image.fromarray(a)
    while min(img.size) >= 2 * size:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), Image.BOX)
    w, h = img.size
    if w <= h:
        new = (size, round(h * size / w))
    else:
        new = (round(w * size / h), size)
    b = np.asarray(img.resize(new, Image.BICUBIC))
    top, left = (b.shape[0] - size) // 2, (b.shape[1] - size) // 2
    return b[top:top + size, left:left + size]


def test_center_crop_is_slicing_when_the_short_side_fits_and_adm_otherwise(folder):
    _, arrays, _ = folder
    a = arrays["a.png"]                               # 16 wide, 24 high: rows 4..19
    assert np.array_equal(P.center_crop(Image.fromarray(a), SIZE), a[4:20])
    b = arrays["b.png"]                               # 30 wide, 16 high: columns 7..22
    assert np.array_equal(P.center_crop(Image.fromarray(b), SIZE), b[:, 7:23])
    for name in ("d.png", "e.png"):
        got = P.center_crop(Image.fromarray(arrays[name]), SIZE)
        assert got.shape == (SIZE, SIZE, 3) and np.array_equal(got, expected_crop(arrays[name], SIZE))


def encode_direct(vae, crops):
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        post = vae.encode(x).latent_dist
    return post.mean.numpy(), post.std.numpy()


def test_latents_labels_flips_and_resume(folder, tmp_path):
    root, arrays, vae = folder
    out = tmp_path / "lat"
    args = [f"--data_dir={root / 'train'}", f"--out_dir={out}", f"--vae={root / 'vae'}", f"--image_size={SIZE}",
            "--num_workers=0", "--batch_size=2", "--chunk_size=4", "--flip=True", "--progress=False"]
    P.main(args)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["num_items"] == 12 and meta["num_images"] == 6
    assert meta["latent_shape"] == [4, 8, 8] and meta["classes"] == ["ant", "bee"] and meta["num_classes"] == 2
    mean, std = np.load(out / "mean.npy"), np.load(out / "std.npy")
    labels = np.load(out / "labels.npy")
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (12, 4, 8, 8)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 1, 1, 1] * 2

    crops = [expected_crop(arrays[name], SIZE) for _, name, _, _ in IMAGES]   # ImageFolder order: sorted
    m, s = encode_direct(vae, crops)
    mf, sf = encode_direct(vae, [c[:, ::-1] for c in crops])
    np.testing.assert_allclose(mean[:6], m, atol=1e-5)
    np.testing.assert_allclose(std[:6], s, atol=1e-5)
    np.testing.assert_allclose(mean[6:], mf, atol=1e-5)                      # entry N + i = flip of i
    np.testing.assert_allclose(std[6:], sf, atol=1e-5)
    assert (std > 0).all() and not np.allclose(mean[:6], mean[6:])

    # resume: chunk 0 (images 0-3) is done and must be left alone; chunk 1 is redone
    mm = np.load(out / "mean.npy", mmap_mode="r+")
    mm[0] = 123.0
    mm[4:6] = 0.0
    mm[10:12] = 0.0
    mm.flush()
    del mm
    os.unlink(out / "done" / "000001")
    P.main(args)
    mean2 = np.load(out / "mean.npy")
    assert (mean2[0] == 123.0).all()                                          # skipped
    np.testing.assert_allclose(mean2[4:6], m[4:6], atol=1e-5)                 # redone
    np.testing.assert_allclose(mean2[10:12], mf[4:6], atol=1e-5)

    # the same folder with other settings is refused
    with pytest.raises(SystemExit, match="another job.*image_size"):
        P.main([a for a in args if not a.startswith("--image_size")] + ["--image_size=8"])


def test_bad_inputs_say_what_was_expected(folder, tmp_path, capsys):
    root, _, _ = folder
    with pytest.raises(SystemExit, match="is not a folder.*one subfolder per class"):
        P.main([f"--data_dir={tmp_path / 'nowhere'}", f"--out_dir={tmp_path / 'o'}"])
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "flat" / "x.png")               # images but no class folders
    with pytest.raises(SystemExit, match="no images found.*one subfolder per class"):
        P.main([f"--data_dir={tmp_path / 'flat'}", f"--out_dir={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="(?s)cannot load the VAE.*--vae=PATH"):
        P.main([f"--data_dir={root / 'train'}", f"--out_dir={tmp_path / 'o'}", f"--vae={tmp_path / 'novae'}",
                "--num_workers=0", "--progress=False"])
    for argv, message in (([f"--data_dir={root / 'train'}", "--chunk_size=0"], "argument --chunk_size: 0 must be >= 1"),
                          (["--flip=ture"], "argument --flip: 'ture' is not True or False"),
                          (["--bogus=1"], "unrecognized arguments: --bogus=1")):
        with pytest.raises(SystemExit) as e:
            P.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_torchrun_shards_the_chunks_over_processes(folder, tmp_path):
    """Two processes (chunks 0, 2 and 1 of 3) write what one process writes."""
    import socket
    import subprocess
    import sys
    root, _, _ = folder
    common = [f"--data_dir={root / 'train'}", f"--vae={root / 'vae'}", f"--image_size={SIZE}", "--num_workers=0",
              "--batch_size=2", "--chunk_size=2", "--progress=False"]
    P.main(common + [f"--out_dir={tmp_path / 'one'}"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={port}", os.path.join(here, "prepare_imagenet.py"),
                          *common, f"--out_dir={tmp_path / 'two'}"],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=here, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "two" / "done")) == ["000000", "000001", "000002"]
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["complete"]
    for name in ("mean", "std", "labels"):
        a, b = np.load(tmp_path / "one" / f"{name}.npy"), np.load(tmp_path / "two" / f"{name}.npy")
        np.testing.assert_allclose(a, b, atol=1e-6)
