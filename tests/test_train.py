"""Tests of train_imagenet.py and of what the training scripts share, on the CPU, on data
made here (a tiny image folder encoded by a tiny random AutoencoderKL) with tiny networks:
runs and outputs, the checkpoint format, bit-identical resumption, a two-process torchrun
(gloo) run against a one-process run with gradient accumulation, atomic checkpoints under
a killed write, non-finite losses, every bad input's message, the data order, the EMA,
and the FLOP count of a step against torch's FLOP counter. train_cifar.py's own tests
(CIFAR-10, MNIST, digits, augmentation) are in test_train_cifar.py."""

import argparse
import math
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
import dit
import settings
import soflow
import train_cifar
import train_imagenet as T
import trainer
import unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIT = ["--model=T/2", "--depth=1", "--hidden_size=32", "--num_heads=2", "--progress=False", "--sample_every=0",
       "--num_workers=0"]

# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    """10 images of 2 classes, 16x16, encoded to 4x8x8 latents by a tiny random VAE."""
    import prepare_imagenet
    from diffusers import AutoencoderKL
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        os.makedirs(root / "train" / c)
        for i in range(5):
            w, h = rng.integers(16, 40, 2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                  norm_num_groups=4, sample_size=16).save_pretrained(root / "vae")
    prepare_imagenet.main([f"--data_dir={root / 'train'}", f"--out_dir={root / 'lat'}", f"--vae={root / 'vae'}",
                           "--image_size=16", "--num_workers=0", "--progress=False"])
    return root / "lat"


def run_imagenet(lat, out, *extra):
    return T.main([f"--data={lat}", f"--out_dir={out}", *DIT, "--batch_size=4", *extra])


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def error_of(main, argv, capsys):
    """The one-line message a bad command line stops with (argparse's, or SystemExit's)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code != 0
    return e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err


def assert_same_state(a, b):
    """Bit-identical model, EMA, optimizer state and step."""
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), ("optimizer", i, k)

# ----------------------------------------------------------------------------- runs and outputs


def test_imagenet_run_writes_checkpoint_logs_and_pngs(latents, tmp_path):
    out = tmp_path / "run"
    assert run_imagenet(latents, out, "--steps=4", "--log_every=2", "--ckpt_every=2", "--sample_every=4",
                        "--num_samples=4", "--keep_every=2", "--peak_tflops=0.001") == 4
    files = sorted(os.listdir(out))
    assert files == ["ckpt.pt", "ckpt_0000002.pt", "ckpt_0000004.pt", "log.csv", "loss.png", "samples_0000004.png"]
    assert Image.open(out / "samples_0000004.png").size[0] > 16 and Image.open(out / "loss.png").size[0] > 100

    ck = load(out / "ckpt.pt")
    assert set(ck) == {"model", "ema", "optimizer", "step", "config"} and ck["step"] == 4
    cfg = ck["config"]
    assert cfg["script"] == "train_imagenet" and set(cfg) == {"script", "net", "soflow", "data", "train"}
    assert cfg["data"]["kind"] == "latents" and cfg["data"]["latent_scale"] == 0.18215
    assert cfg["data"]["num_classes"] == 2 and cfg["data"]["image_size"] == 16
    # the network and the method rebuild from the config alone
    net_cfg = dict(cfg["net"])
    assert net_cfg.pop("kind") == "dit"
    net = dit.DiT(**net_cfg)
    net.load_state_dict(ck["model"], strict=True)
    net.load_state_dict(ck["ema"], strict=True)
    sf = soflow.SoFlowConfig(**cfg["soflow"])
    assert sf.total_steps == 4 and sf.num_classes == 2 and sf.guidance_scale == 3.0       # K = steps; labels from the data
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model"])
    # the frozen position embedding is not optimized
    n_trainable = sum(1 for p in net.parameters() if p.requires_grad)
    assert len(ck["optimizer"]["param_groups"][0]["params"]) == n_trainable < len(list(net.parameters()))
    assert ck["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(ck["model"]["pos_embed"], ck["ema"]["pos_embed"])
    # the EMA lags: it moved from the initial weights, but less than the model
    assert ck["ema"]["final_layer.linear.weight"].abs().sum() < ck["model"]["final_layer.linear.weight"].abs().sum()

    import csv
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["step"] for r in rows] == ["2", "4"]
    for r in rows:
        for k in ("loss", "fm_mse", "fm_weight", "scm_mse", "scm_weight", "grad_norm", "img_per_s"):
            assert math.isfinite(float(r[k])), k
    assert float(rows[1]["r"]) == pytest.approx(soflow.r_at(sf, 4))
    # MFU: the analytic operations of a step (4 images, one process) at the logged rate, over the given peak
    # (rel: both figures are rounded in the log)
    step_ops = trainer.step_flops(dit.flops(net.config), sf, 4, 1, 1)
    for r in rows:
        assert float(r["mfu"]) == pytest.approx(float(r["img_per_s"]) / 4 * step_ops / 1e9, rel=1e-2)
    # the keep_every copies are checkpoints of their step
    assert load(out / "ckpt_0000002.pt")["step"] == 2


# ----------------------------------------------------------------------------- resumption


def test_imagenet_resume_is_bit_identical(latents, tmp_path):
    args = ["--steps=6", "--micro_batch=2", "--ckpt_every=2", "--log_every=3"]      # 2 micro-steps per step
    run_imagenet(latents, tmp_path / "full", *args)
    run_imagenet(latents, tmp_path / "cut", *args, "--stop_at=3")                  # interrupted at step 3 ...
    assert load(tmp_path / "cut" / "ckpt.pt")["step"] == 3
    run_imagenet(latents, tmp_path / "cut", *args, "--log_every=1")                # ... resumed (log_every may change)
    assert_same_state(load(tmp_path / "full" / "ckpt.pt"), load(tmp_path / "cut" / "ckpt.pt"))
    import csv
    assert [r["step"] for r in csv.DictReader(open(tmp_path / "cut" / "log.csv"))] == ["3", "4", "5", "6"]


def test_resume_with_another_config_names_the_differences(latents, tmp_path):
    run_imagenet(latents, tmp_path, "--steps=2")
    with pytest.raises(SystemExit, match=r"(?s)another configuration.*net\.depth: checkpoint 1, now 2.*"
                                         r"soflow\.guidance_scale: checkpoint 3\.0, now 2\.0.*train\.lr: checkpoint 0\.0001, now 0\.0002"):
        run_imagenet(latents, tmp_path, "--steps=2", "--lr=2e-4", "--depth=2", "--guidance_scale=2.0")
    with pytest.raises(SystemExit, match=r"soflow\.total_steps: checkpoint 2, now 3"):   # K changes the method
        run_imagenet(latents, tmp_path, "--steps=3")
    # what may change: intervals, micro-batch, attention kernel, where the data are
    assert run_imagenet(latents, tmp_path, "--steps=2", "--log_every=7", "--micro_batch=1", "--attn=math") == 2

# ----------------------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one_process_with_accumulation(latents, tmp_path):
    """2 processes x 1 micro-batch of 2 (gloo) and 1 process x 2 accumulation micro-steps
    draw the same data and noise: the same weights up to the rounding of the gradient
    average. Both ranks report the same parameter checksum."""
    args = [f"--data={latents}", *DIT, "--batch_size=4", "--micro_batch=2", "--steps=3", "--log_every=3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", os.path.join(ROOT, "train_imagenet.py"),
           *args, f"--out_dir={tmp_path / 'ddp'}"]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # the two processes share stdout, so one line may run into the other's
    sums = dict(re.findall(r"\[rank (\d)\] parameter checksum ([-+.e0-9]+)", res.stdout))
    assert len(sums) == 2 and sums["0"] == sums["1"], res.stdout + "\n----\n" + res.stderr
    assert "batch 4 = 2 x 1 accumulation x 2 processes" in res.stdout

    T.main(args + [f"--out_dir={tmp_path / 'one'}"])
    a, b = load(tmp_path / "ddp" / "ckpt.pt"), load(tmp_path / "one" / "ckpt.pt")
    assert a["config"]["train"]["micro_batch"] == b["config"]["train"]["micro_batch"] == 2
    moved = 0
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=2e-6, rtol=0)
        moved += int(not torch.equal(a["model"][k], load(tmp_path / "one" / "ckpt.pt")["ema"][k]))
    assert moved > 0

# ----------------------------------------------------------------------------- failures


def test_killed_checkpoint_write_leaves_the_previous_checkpoint(latents, tmp_path, monkeypatch):
    run_imagenet(latents, tmp_path, "--steps=4", "--stop_at=2")
    before = load(tmp_path / "ckpt.pt")
    real_save = torch.save

    def dies_midway(obj, f, *a, **k):      # writes part of the file, then the process "dies"
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run_imagenet(latents, tmp_path, "--steps=4")
    monkeypatch.setattr(torch, "save", real_save)
    assert_same_state(before, load(tmp_path / "ckpt.pt"))                      # the previous one, whole
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "log.csv"]
    # a temporary file left by a SIGKILL is ignored and cleaned up; the run resumes
    (tmp_path / "ckpt.pt.x1y2.tmp").write_bytes(b"garbage")
    assert run_imagenet(latents, tmp_path, "--steps=4") == 4
    assert not (tmp_path / "ckpt.pt.x1y2.tmp").exists() and load(tmp_path / "ckpt.pt")["step"] == 4


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(latents, tmp_path, monkeypatch):
    real = soflow.soflow_loss

    def breaks_at_step_3(net, cfg, x0, y=None, step=0, generator=None, net_kwargs=None):
        loss, logs = real(net, cfg, x0, y, step, generator, net_kwargs)
        return (loss * float("nan") if step >= 2 else loss), logs     # step index 2 = the 3rd step

    monkeypatch.setattr(soflow, "soflow_loss", breaks_at_step_3)
    with pytest.raises(SystemExit, match=r"non-finite loss or gradient at step 3.*holds the last good state"):
        run_imagenet(latents, tmp_path, "--steps=8", "--ckpt_every=2", "--log_every=100")
    ck = load(tmp_path / "ckpt.pt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values())


@pytest.mark.parametrize("arg, message", [
    ("--lr=0", r"--lr=0\.0: must be in \(0, 1\]"),
    ("--lr=1e39", r"--lr=1e\+39: must be in \(0, 1\]"),
    ("--batch_size=0", r"--batch_size=0: must be >= 1"),
    ("--ema_decay=1.0", r"--ema_decay=1\.0: must be in \[0, 1\)"),
    ("--beta2=1.5", r"--beta2=1\.5: must be in \[0, 1\)"),
    ("--steps=-3", r"--steps=-3: must be in \[1, 2\*\*24\)"),
    ("--optimizer=sgd", r"argument --optimizer: invalid choice: 'sgd'"),
    ("--precision=fp16", r"argument --precision: invalid choice: 'fp16'"),
    ("--guidance_scale=0.5", r"SoFlowConfig\.guidance_scale = 0\.5: must be >= 1"),
    ("--guidance_scale=abc", r"argument --guidance_scale: 'abc' is not a finite number"),
    ("--eps=inf", r"argument --eps: 'inf' is not a finite number"),
    ("--hidden_size=abc", r"argument --hidden_size: invalid int value: 'abc'"),
    ("--depth=0", r"the network: .*depth"),
    ("--method=nope", r"argument --method: invalid choice: 'nope'"),
    ("--total_steps=5", r"unrecognized arguments: --total_steps=5"),
    ("--micro_batch=3", r"--batch_size=4 is not divisible by micro_batch x world size = 3 x 1 = 3"),
    ("--lr=fast", r"argument --lr: 'fast' is not a finite number"),
    ("--bogus=1", r"unrecognized arguments: --bogus=1"),
    ("--model=Z/9", r"argument --model: invalid choice: 'Z/9'"),
    ("--progress=maybe", r"argument --progress: 'maybe' is not True or False"),
])
def test_bad_config_values_fail_before_touching_the_data(tmp_path, capsys, arg, message, latents):
    # the configuration is checked first: with no data folder, or (--depth) before any compute
    data = latents if arg == "--depth=0" else tmp_path / "none"
    msg = error_of(T.main, [f"--data={data}", f"--out_dir={tmp_path}", *DIT, "--batch_size=4", arg], capsys)
    assert re.search(message, msg) and len(msg.strip().splitlines()) == 1, msg
    assert not (tmp_path / "ckpt.pt").exists()


def test_batch_divisibility_across_processes(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert re.search(r"--batch_size=4 cannot be shared by 3 processes",
                     error_of(T.main, [f"--data={tmp_path}", *DIT, "--batch_size=4"], capsys))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert re.search(r"micro_batch x world size = 4 x 2 = 8.*divides 2",
                     error_of(T.main, [f"--data={tmp_path}", *DIT, "--batch_size=4", "--micro_batch=4"], capsys))


def test_missing_and_malformed_latents(latents, tmp_path):
    with pytest.raises(SystemExit, match=r"(?s)no ImageNet latents in .*prepare_imagenet\.py --data_dir"):
        run_imagenet(tmp_path / "nothing", tmp_path / "o")
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(latents, bad)
    np.save(bad / "std.npy", np.zeros((10, 4, 8, 7), np.float32))
    with pytest.raises(SystemExit, match=r"(?s)malformed ImageNet latents: .*std\.npy: float32 \(10, 4, 8, 7\), "
                                         r"expected float32 \(10, 4, 8, 8\).*prepare_imagenet\.py"):
        run_imagenet(bad, tmp_path / "o")
    data = (latents / "std.npy").read_bytes()
    (bad / "std.npy").write_bytes(data[:len(data) // 2])                       # a truncated file is named
    with pytest.raises(SystemExit, match=r"malformed ImageNet latents: .*std\.npy: "):
        run_imagenet(bad, tmp_path / "o")
    shutil.copy(latents / "std.npy", bad / "std.npy")
    meta = (bad / "meta.json").read_text().replace('"complete": true', '"complete": false')
    (bad / "meta.json").write_text(meta)
    with pytest.raises(SystemExit, match=r"not finished.*run the same command again"):
        run_imagenet(bad, tmp_path / "o")
    with pytest.raises(SystemExit, match=r"holds 10 latents, fewer than one batch of --batch_size=16"):
        T.main([f"--data={latents}", f"--out_dir={tmp_path / 'o'}", *DIT, "--batch_size=16"])


def test_unreadable_checkpoints_and_out_dir_say_so(latents, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit, match=r"--out_dir='.*file' is a file, not a folder"):
        run_imagenet(latents, tmp_path / "file")
    run_imagenet(latents, tmp_path / "run", "--steps=2")
    good = (tmp_path / "run" / "ckpt.pt").read_bytes()
    for content, what in ((good[:len(good) // 2], "cannot be read, it is truncated"), (b"", r"is empty \(0 bytes\)")):
        (tmp_path / "run" / "ckpt.pt").write_bytes(content)
        with pytest.raises(SystemExit, match=rf"ckpt\.pt {what}.*Delete it to start again"):
            run_imagenet(latents, tmp_path / "run", "--steps=4")
        assert (tmp_path / "run" / "ckpt.pt").read_bytes() == content           # nothing on disk damaged
    # a checkpoint is data: one holding any other object is not unpickled (weights_only=True)
    torch.save({"model": {}, "config": argparse.Namespace(evil=True)}, tmp_path / "run" / "ckpt.pt")
    with pytest.raises(SystemExit, match=r"holds more than tensors and plain containers, so it is not loaded"):
        run_imagenet(latents, tmp_path / "run", "--steps=4")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.load(tmp_path / "nowhere.pt")
    with pytest.raises(ValueError, match="network kind 'mlp'"):
        checkpoints.build({"net": {"kind": "mlp"}, "soflow": {}})


SCRIPT_ERRORS = [   # (script, arguments, text the one line names): run as a user runs them
    ("train_imagenet.py", ["--guidance_scale=abc"], "--guidance_scale"),
    ("train_imagenet.py", ["--eps=inf"], "--eps"),
    ("train_imagenet.py", ["--hidden_size=abc"], "--hidden_size"),
    ("train_imagenet.py", ["--lr=1e39"], "--lr=1e+39"),
    ("train_imagenet.py", ["--data=/nonexistent"], "/nonexistent"),
    ("train_cifar.py", ["--augment_p=2"], "--augment_p=2.0"),
    ("prepare_imagenet.py", ["--data_dir=/nonexistent"], "/nonexistent"),
    ("prepare_imagenet.py", ["--chunk_size=0"], "--chunk_size"),
]


@pytest.mark.parametrize("script, args, named", SCRIPT_ERRORS)
def test_user_errors_are_one_line_without_traceback(script, args, named, tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, script), f"--out_dir={tmp_path / 'o'}", *args],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], res.stderr
    assert not (tmp_path / "o" / "ckpt.pt").exists()


@pytest.mark.parametrize("script, option", [("train_imagenet.py", "--batch_size"), ("train_cifar.py", "--augment_p"),
                                            ("prepare_imagenet.py", "--chunk_size")])
def test_help_exits_zero(script, option):
    res = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 0 and option in res.stdout, res.stderr

# ----------------------------------------------------------------------------- kills, logs, kept checkpoints


def log_steps(path):
    import csv
    return [int(r["step"]) for r in csv.DictReader(open(path))]


def test_kill_before_the_first_checkpoint_leaves_one_row_per_step(latents, tmp_path, monkeypatch):
    real = trainer.Run.save

    def killed(self, step, *a):
        raise KeyboardInterrupt("SIGKILL before the first checkpoint")

    monkeypatch.setattr(trainer.Run, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        run_imagenet(latents, tmp_path, "--steps=5", "--log_every=1", "--ckpt_every=5")
    assert log_steps(tmp_path / "log.csv") == [1, 2, 3, 4, 5] and not (tmp_path / "ckpt.pt").exists()
    monkeypatch.setattr(trainer.Run, "save", real)
    run_imagenet(latents, tmp_path, "--steps=5", "--log_every=1", "--ckpt_every=5")
    assert log_steps(tmp_path / "log.csv") == [1, 2, 3, 4, 5]


def test_kill_between_the_save_and_the_keep_link_keeps_the_checkpoint(latents, tmp_path, monkeypatch):
    def killed(src, dst):
        raise KeyboardInterrupt("SIGKILL in place of os.link")

    monkeypatch.setattr(os, "link", killed)
    with pytest.raises(KeyboardInterrupt):
        run_imagenet(latents, tmp_path, "--steps=6", "--ckpt_every=2", "--keep_every=2")
    assert load(tmp_path / "ckpt.pt")["step"] == 2 and not (tmp_path / "ckpt_0000002.pt").exists()
    monkeypatch.undo()
    run_imagenet(latents, tmp_path, "--steps=6", "--ckpt_every=2", "--keep_every=2")
    assert [load(tmp_path / f"ckpt_{s:07d}.pt")["step"] for s in (2, 4, 6)] == [2, 4, 6]


def test_every_keep_every_step_is_kept(latents, tmp_path):
    run_imagenet(latents, tmp_path, "--steps=12", "--ckpt_every=3", "--keep_every=5", "--log_every=4")
    kept = sorted(f for f in os.listdir(tmp_path) if f.startswith("ckpt_"))
    assert kept == ["ckpt_0000005.pt", "ckpt_0000010.pt"]
    assert [load(tmp_path / f)["step"] for f in kept] == [5, 10] and load(tmp_path / "ckpt.pt")["step"] == 12

# ----------------------------------------------------------------------------- presets and settings


def test_presets_list_and_apply(capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["--list_presets"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in ("B/4:", "B/2:", "M/2:", "L/2:", "XL/2:", "XL/2-released:"):
        assert name in text
    assert "--model=XL/2 --method=imagenet --steps=1200000 --batch_size=256" in text
    assert "mu_s=-1.0" in text and "r_end=0.002" in text and "hidden_size=1152" in text
    with pytest.raises(SystemExit):
        train_cifar.main(["--list_presets"])
    text = capsys.readouterr().out
    assert "cifar10:" in text and "cifar10_released:" in text and "fm_ratio=0.0" in text and "p=0.75" in text
    digits = text[text.index("\ndigits:"):text.index("\nmnist:")]          # its method line has its own fields
    assert "guidance_t_max=0.15" in digits.split("method: ")[1] and "mu_fm=-0.4" in digits.split("method: ")[1]
    C = settings.configure(train_cifar.SETTINGS, train_cifar.PRESETS, unet.UNet, "", train_cifar.__file__,
                           ["--preset=digits", "--model_channels=8", "--p=0.3"], fixed=("img_resolution", "in_channels"))
    assert C.net_args["model_channels"] == 8 and C.net_args["channel_mult"] == (1, 2)      # the option wins
    assert C.method_args["p"] == 0.3 and C.method_args["guidance_t_max"] == 0.15 and C.dataset == "digits"

    C = settings.configure(T.SETTINGS, T.PRESETS, dit.DiT, "", T.__file__,
                          ["--steps=10", "--preset=XL/2-released", "--depth=3", "--guidance_scale=2"],
                          fixed=("input_size", "in_channels", "num_classes"))
    assert (C.model, C.method, C.optimizer, C.steps) == ("XL/2", "imagenet_released", "adamw", 10)
    assert C.net_args == {"depth": 3} and C.method_args == {"guidance_scale": 2.0}
    assert settings.method_config(C).guidance_scale == 2.0 and settings.method_config(C).total_steps == 10
    C = settings.configure(T.SETTINGS, T.PRESETS, dit.DiT, "", T.__file__, ["--compile=off", "--lr=1", "--progress=False"])
    assert C.compile == "off" and C.lr == 1.0 and isinstance(C.lr, float) and C.progress is False

# ----------------------------------------------------------------------------- pieces


def test_data_order_is_a_permutation_per_epoch_and_independent_of_the_world_size():
    n, batch = 23, 4                                     # 5 batches per epoch, 3 images skipped
    for epoch in range(2):
        seen = np.concatenate([trainer.step_indices(n, batch, 7, 5 * epoch + k) for k in range(5)])
        assert len(set(seen.tolist())) == 20 and seen.min() >= 0 and seen.max() < n
    assert not np.array_equal(trainer.step_indices(n, batch, 7, 0), trainer.step_indices(n, batch, 7, 5))
    # every (world, micro) split covers the global batch exactly once, with the same
    # micro-batch index for the same images
    parts = {}
    for world, micro in ((1, 4), (2, 2), (4, 1), (1, 1), (2, 1)):
        got = {}
        for rank in range(world):
            for j, sl in trainer.micro_slices(batch, micro, rank, world):
                got[j] = list(range(batch))[sl]
        assert sorted(i for v in got.values() for i in v) == list(range(batch))
        parts.setdefault(micro, got)
        assert parts[micro] == got
    # every (seed, step, index) draws its own noise, also far apart (torch's CPU generator keeps
    # only 32 bits of a seed: packed bits would repeat every 65,536 steps and ignore the seed)
    draws = set()
    cases = ((1, 2, 3), (1, 3, 2), (2, 2, 3), (1, 2 + 65536, 3), (0, 0, 0), (0, 65536, 0), (0, 1, 0))
    for seed, step, index in cases:
        trainer.seed_micro_step(seed, step, index, torch.device("cpu"))
        draws.add(torch.rand(()).item())
    assert len(draws) == len(cases)


def test_ema_decay_and_interval():
    net = torch.nn.Linear(3, 2)
    p0 = [p.detach().clone() for p in net.parameters()]
    ema = trainer.EMA(net, 0.9, every=2, dtype="float64")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    for step in range(1, 5):                             # updates at steps 2 and 4, each with 0.9 ** 2
        ema.update(net, step)
    for e, a, p in zip(ema.net.parameters(), p0, net.parameters()):
        assert e.dtype == torch.float64
        expected = p.double() + (a.double() - p.double()) * 0.9 ** 4
        torch.testing.assert_close(e, expected, rtol=0, atol=1e-12)


def test_step_flops_match_torch_flop_counter():
    """The analytic FLOPs of a step (MFU) against torch's counter around the real loss
    and backward, on a small DiT with guidance and on a small U-Net."""
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    # math attention: torch's counter does not see the CPU's fused attention kernel in every version
    net = dit.dit_from_name("T/2", input_size=8, depth=2, hidden_size=64, num_heads=4, num_classes=10, attn="math")
    cfg = soflow.preset("imagenet", num_classes=10)
    x0, y = torch.randn(8, 4, 8, 8), torch.randint(0, 10, (8,))
    with FlopCounterMode(display=False) as fc:
        loss, _ = soflow.soflow_loss(net, cfg, x0, y)
        loss.backward()
    expected = trainer.step_flops(dit.flops(net.config), cfg, micro=8, accum=1, world_size=1)
    assert fc.get_total_flops() == pytest.approx(expected, rel=0.03)
    assert trainer.step_flops(dit.flops(net.config), cfg, 8, 4, 2) == 8 * expected

    ucfg = dict(img_resolution=32, in_channels=3, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[16], dropout=0.0, noise_channels=16, emb_mult=1, augment_dim=6,
                resample_filter=[1, 3, 3, 1], attn="fused")
    u = unet.UNet(**{**ucfg, "attn": "math"})
    with FlopCounterMode(display=False) as fc:
        u(torch.randn(3, 3, 32, 32), torch.rand(3), torch.zeros(3), augment_labels=torch.zeros(3, 6))
    assert fc.get_total_flops() == 3 * 2 * unet.flops(ucfg)
