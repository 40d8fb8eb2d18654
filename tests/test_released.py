"""Tests of the authors' released models: checkpoints.from_yaml maps each released configuration's
config.yaml (written as the authors' imagenet.yaml and cifar.yaml are) to the network, its sizes
(the paper's Table 4), its label table and the method of the release, built on the meta device (no
compute), and refuses a config it cannot map with one line naming the field; checkpoints.resolve
takes a file, a folder in the release's layout or a released configuration's name (the hub
download replaced here: nothing can be fetched); sample.py samples tiny configurations in that
layout end to end by name, into folders named by their seed and sampler; train_imagenet.py
fine-tunes from one (--init_from), and the fine-tuning run resumes bit for bit; a conditional
grayscale pixel checkpoint gives one grid row per class, labels and RGB images in the .npz."""

import functools
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import checkpoints
import dit
import sample
import soflow
import trainer
import unet
from test_sample import assert_images_close, expected_uint8, load_npz, randomize, save_project, save_released
from test_train import assert_same_state, latents, load, run_imagenet  # noqa: F401 (latents: a fixture)

# The authors' imagenet.yaml and cifar.yaml (their release), comments and all; a released folder's
# config.yaml is a copy of the one its run was trained with.
IMAGENET_YAML = """working_dir: ./your_experiment_name
noising_type: Linear # 'Linear', 'Triangular' for flow matching noising trajectory
coefficient_type: Euler # 'Euler', 'Triangular' for solution function parameterization
model_type: DiT-B-4 # 'UNet', 'DiT-B-4', 'DiT-B-2', 'DiT-M-2', 'DiT-L-2', 'DiT-XL-2'
dataset_type: Imagenet # 'CIFAR10' (3 channels), 'Imagenet' (4 channels)
data_size: 32 # shape: channels x data_size x data_size, 256 // 8 = 32
dataset_path: ./imagenet_latent

velocity_loss_ratio: 0.75 # Flow matching data ratio
p: 1.0 
eps: 0.01 
time_mean: [-0.2, -1.0, 0.2] # logit-normal time sampling
time_std: [1.0, 0.8, 0.8]
cfg_scale: 3.0 # Training guidance strength
mix_ratio: 0.25 # Velocity mix ratio
cfg_drop_rate: 0.1 # Label dropout ratio
cfg_decay_time: 0.8 # Decay CFG strength for large noise region
l_schedule: Exponent # 'Const','Linear','Cosine','Exponent', for schedule r(k,K)
l_init_ratio: 0.1  # r_init
l_end_ratio: 0.002 # r_end

total_steps: 400000
ema_decay_rate: 0.9999
learning_rate: 0.0001
betas: [0.9, 0.99]
weight_decay: 0.0

batch_size: 256
num_workers: 8
prefetch_factor: 4

eval_steps: 25000
eval_batch_size: 125
eval_NFE: 1
eval_demo_steps: 1000
eval_demo_shape: [4, 8]

ckpt_saving_steps: 25000
logging_steps: 100
seed: 42
"""
CIFAR_YAML = """working_dir: ./your_experiment_name_cifar
noising_type: Linear # 'Linear', 'Triangular' for flow matching noising trajectory
coefficient_type: Euler # 'Euler', 'Triangular' for solution function parameterization
model_type: UNet # 'UNet', 'DiT-B-4', 'DiT-B-2', 'DiT-M-2', 'DiT-L-2', 'DiT-XL-2'
dataset_type: CIFAR10 # 'CIFAR10' (3 channels), 'Imagenet' (4 channels)
data_size: 32 # shape: channels x data_size x data_size
dataset_path: ./CIFAR10

velocity_loss_ratio: 0.0 # Flow matching data ratio
p: 0.75 
eps: 0.001
time_mean: [-0.9, -4.0, -0.9] # logit-normal time sampling
time_std: [1.6, 1.6, 1.6]
cfg_scale: 1.0 # Disable guidance for unconditional generation
mix_ratio: 1.0 # Disable velocity mix ratio
cfg_drop_rate: 0.0
cfg_decay_time: 1.0
l_schedule: Exponent # 'Const','Linear','Cosine','Exponent', for schedule r(k,K)
l_init_ratio: 1.0 # r_init
l_end_ratio: 0.0003125 # r_end

total_steps: 800000
ema_decay_rate: 0.9999
learning_rate: 0.0001
betas: [0.9, 0.999]
weight_decay: 0.0

batch_size: 1024
num_workers: 12
prefetch_factor: 6

eval_steps: 25000
eval_batch_size: 125
eval_NFE: 1
eval_demo_steps: 1000
eval_demo_shape: [4, 8]

ckpt_saving_steps: 25000
logging_steps: 100
seed: 42
"""
UNGUIDED = dict(cfg_scale=1.0, mix_ratio=1.0, cfg_drop_rate=0.0, cfg_decay_time=1.0)   # as cifar.yaml disables it


def with_fields(text, **changes):
    """The yaml text with some fields' values replaced (comments kept), removed (None) or added."""
    for key, value in changes.items():
        text, n = re.subn(rf"^{key}:[^#\n]*(#.*)?\n", "" if value is None else rf"{key}: {value} \1\n", text, flags=re.M)
        text += f"{key}: {value}\n" * (n == 0)
    return text


def write_yaml(folder, text):
    os.makedirs(folder, exist_ok=True)
    Path(folder, "config.yaml").write_text(text)
    return Path(folder, "config.yaml")


def mapped(text):
    """checkpoints.from_yaml of a config.yaml's text, on the meta device (no compute)."""
    with torch.device("meta"):
        return checkpoints.from_yaml(yaml.safe_load(text))

# -----------------------------------------------------------------------------
# config.yaml -> network, method, data


# name: (its config.yaml, the DiT's depth, hidden size, heads, patch and parameters in M of the paper's Table 4)
RELEASED = {
    "XL-2-cond": (with_fields(IMAGENET_YAML, model_type="DiT-XL-2", total_steps=1200000), (28, 1152, 16, 2, 676)),
    "L-2-cond": (with_fields(IMAGENET_YAML, model_type="DiT-L-2", total_steps=1200000), (24, 1024, 16, 2, 459)),
    "M-2-cond": (with_fields(IMAGENET_YAML, model_type="DiT-M-2", total_steps=1200000), (16, 1024, 16, 2, 308)),
    "B-2-cond": (with_fields(IMAGENET_YAML, model_type="DiT-B-2", total_steps=1200000), (12, 768, 12, 2, 131)),
    "B-4-cond": (IMAGENET_YAML, (12, 768, 12, 4, 131)),
    "B-4-uncond": (with_fields(IMAGENET_YAML, **UNGUIDED), (12, 768, 12, 4, 131)),
    "UNet-uncond": (CIFAR_YAML, None),
}


@pytest.mark.parametrize("name", RELEASED)
def test_each_released_config_maps_to_its_network_and_method(name):
    text, sizes = RELEASED[name]
    net, cfg, data = mapped(text)
    with torch.device("meta"):
        if sizes is None:           # CIFAR-10: the U-Net of the authors' models.py (unet.py's defaults), unconditional
            assert type(net) is unet.UNet and net.config == unet.UNet().config and net.num_classes == 0
            assert sum(p.numel() for p in net.parameters()) == 55_932_419
            assert cfg == soflow.preset("cifar10_released", guidance_t_max=1.0) and cfg.num_classes is None
            assert data == {"kind": "pixels", "dataset": "cifar10", "image_size": 32, "num_classes": None}
            return
    depth, hidden, heads, patch, millions = sizes
    assert type(net) is dit.DiT and (net.config["depth"], net.config["hidden_size"], net.config["num_heads"],
                                     net.config["patch_size"]) == (depth, hidden, heads, patch)
    assert (net.input_size, net.in_channels, net.num_classes) == (32, 4, 1000)          # 32x32x4 SD-VAE latents
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - millions) < 1
    assert data == {"kind": "latents", "vae": "stabilityai/sd-vae-ft-mse", "latent_scale": 0.18215, "image_size": 256,
                    "num_classes": 1000}
    steps = 400_000 if patch == 4 else 1_200_000
    rows = net.y_embedder.embedding_table.weight.shape[0]
    if name.endswith("-cond"):      # 1000 classes and the null label that label dropout trains
        assert rows == 1001 and net.null_label and cfg.guided
        assert cfg == soflow.preset("imagenet_released", total_steps=steps)
    else:                           # no label dropout, no guidance: the labels are ImageNet's 1000 classes, no null row
        assert rows == 1000 and not net.null_label and not cfg.guided and cfg.num_classes == 1000
        assert cfg == soflow.preset("imagenet_released", total_steps=steps, guidance_scale=1.0, guidance_mix=1.0,
                                    label_drop=0.0, guidance_t_max=1.0)


def test_unguided_config_ignores_the_mix_ratio_and_trig_names():
    """The authors' train.py mixes velocities and drops labels only when cfg_scale > 1 (a config that
    keeps mix_ratio 0.25 is unguided all the same); 'Triangular' (their yaml's comments) and 'Trig'
    (their code) are the trigonometric schedule and parameterization; 'Const' is r = r_end."""
    text = with_fields(IMAGENET_YAML, cfg_scale=1.0, cfg_drop_rate=0.0, noising_type="Triangular",
                       coefficient_type="Trig", l_schedule="Const")
    _, cfg, _ = mapped(text)
    assert (cfg.guidance_mix, cfg.label_drop, cfg.guided) == (1.0, 0.0, False)
    assert (cfg.schedule, cfg.param, cfg.r_schedule, soflow.r_at(cfg, 0)) == ("trig", "trig", "constant", 0.002)


BAD_YAML = [  # (changes to the authors' imagenet.yaml, the message)
    (dict(guidance_interval="[0.1, 0.9]"), "unknown field \\['guidance_interval'\\]"),
    (dict(cfg_decay_time=None), "no field \\['cfg_decay_time'\\]"),
    (dict(model_type="DiT-H-2"), "model_type: 'DiT-H-2', expected one of \\['UNet', 'DiT-B-4'"),
    (dict(model_type="UNet"), "model_type: UNet with dataset_type Imagenet"),
    (dict(dataset_type="ImageNet"), "dataset_type: 'ImageNet', expected one of \\['Imagenet', 'CIFAR10'\\]"),
    (dict(noising_type="Cosine"), "noising_type: 'Cosine', expected one of"),
    (dict(l_schedule="Exponential"), "l_schedule: 'Exponential', expected one of"),
    (dict(time_mean="[-0.2, 0.2]"), "time_mean: \\[-0.2, 0.2\\], expected \\[flow matching, s, t\\]"),
    (dict(time_std="[1.0, bad, 0.8]"), "time_std\\[1\\]: SoFlowConfig.sigma_s = 'bad': must be a finite number"),
    (dict(eps=-1), "eps: SoFlowConfig.eps = -1: must be > 0"),
    (dict(cfg_scale=0.5), "cfg_scale: SoFlowConfig.guidance_scale = 0.5: must be >= 1"),
    (dict(cfg_drop_rate=0.0), "cfg_drop_rate: 0.0 with cfg_scale 3.0"),
    (dict(total_steps=1.5), "total_steps: SoFlowConfig.total_steps = 1.5: must be an integer"),
    (dict(data_size=30), "data_size: patch_size=4 does not divide input_size=30"),
]


@pytest.mark.parametrize("changes, message", BAD_YAML)
def test_a_config_that_cannot_be_mapped_is_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError) as e:
        mapped(with_fields(IMAGENET_YAML, **changes))
    assert str(e.value).startswith("config.yaml: ") and re.search(message, str(e.value)), e.value
    assert "\n" not in str(e.value)


def test_cifar_guidance_and_broken_files_are_refused(tmp_path):
    for text, message in ((with_fields(CIFAR_YAML, cfg_scale=2.0), "cfg_scale: .*guidance .*needs labels"),
                          (with_fields(CIFAR_YAML, model_type="DiT-B-2"), "model_type: DiT-B-2 with dataset_type CIFAR10"),
                          ("just words", "not a mapping")):
        with pytest.raises(ValueError, match=message):
            mapped(text)
    # in a released folder: the file is named
    net = randomize(dit.dit_from_name("T/2", input_size=8, num_classes=1000), 0)
    release(tmp_path, "Broken", "a: [1, 2", net, net)
    with pytest.raises(ValueError, match=r"Broken/config.yaml: not YAML \(while parsing"):
        checkpoints.load_model(tmp_path / "Broken")
    release(tmp_path, "Broken", with_fields(IMAGENET_YAML, model_type="DiT-T-3"), net, net)
    with pytest.raises(ValueError, match=r"Broken/config.yaml: model_type: 'DiT-T-3', expected one of"):
        checkpoints.load_model(tmp_path / "Broken")

# -----------------------------------------------------------------------------
# Names, folders, files


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """huggingface_hub.snapshot_download replaced: it 'downloads' from the folder hub/ (which holds
    configurations in the release's layout) and records what it was asked for."""
    import huggingface_hub
    root, calls = tmp_path / "hub", []

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        return str(root)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return root, calls


def test_resolve_takes_a_file_a_folder_or_a_name(hub, tmp_path, monkeypatch):
    root, calls = hub
    folder = root / "Tiny-cond"
    write_yaml(folder, IMAGENET_YAML)
    os.makedirs(folder / "ckpts")
    for f in ("0.pt", "99999.pt", "100000.pt", "notes.txt", "100000.pt.tmp"):
        (folder / "ckpts" / f).write_bytes(b"")
    last = str(folder / "ckpts" / "100000.pt")                      # the most steps, by number
    assert checkpoints.resolve(folder) == last and checkpoints.resolve(last) == last and not calls
    monkeypatch.chdir(tmp_path)                                     # no local Tiny-cond here: the hub
    assert checkpoints.resolve("Tiny-cond") == checkpoints.resolve("zlab-princeton/SoFlow/Tiny-cond") == last
    assert calls == [("zlab-princeton/SoFlow", ["Tiny-cond/config.yaml", "Tiny-cond/ckpts/*.pt"])] * 2
    for source in ("nope.pt", "out/run/ckpt.pt", str(root)):        # paths are not names; a folder needs the layout
        with pytest.raises(FileNotFoundError, match="no such checkpoint, nor the folder of a released configuration"):
            checkpoints.resolve(source)
    with pytest.raises(FileNotFoundError, match="Nope-cond: no such checkpoint"):       # not on the hub
        checkpoints.resolve("Nope-cond")
    assert len(calls) == 3


def test_offline_fetch_is_one_line(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder.\nMore")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError) as e:
        checkpoints.resolve("XL-2-cond")
    assert "\n" not in str(e.value) and "cannot fetch 'XL-2-cond' from zlab-princeton/SoFlow (Cannot find" in str(e.value)
    assert "hf download zlab-princeton/SoFlow --include 'XL-2-cond/*' --local-dir SoFlow" in str(e.value)

# -----------------------------------------------------------------------------
# Sampling by name, end to end


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    """A tiny random AutoencoderKL (2x down-sampling: 8x8x4 latents -> 16x16 images)."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8)
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder, vae.eval()


def release(root, name, text, net, ema, steps=3000):
    """A configuration in the release's layout: NAME/config.yaml, NAME/ckpts/STEPS.pt."""
    write_yaml(root / name, text)
    os.makedirs(root / name / "ckpts", exist_ok=True)
    return save_released(root / name / "ckpts" / f"{steps}.pt", net, ema)


def run_sample(*argv):
    out = sample.main([*map(str, argv)])
    return out, load_npz(out / "samples.npz")


def test_sample_by_name_cond_and_uncond(hub, vae_folder, tmp_path, monkeypatch):
    root, _ = hub
    vae_path, vae = vae_folder
    monkeypatch.chdir(tmp_path)
    tiny = dict(input_size=8, in_channels=4, num_classes=1000)             # what config.yaml builds from DiT-T-2
    for name, changes, null_label in (("Tiny-cond", {}, True), ("Tiny-uncond", UNGUIDED, False)):
        net, ema = (randomize(dit.dit_from_name("T/2", **tiny, null_label=null_label), s) for s in (1, 2))
        release(root, name, with_fields(IMAGENET_YAML, model_type="DiT-T-2", data_size=8, **changes), net, ema)
        out, got = run_sample(name, "--vae", vae_path, "--num_samples", 6, "--batch_size", 4, "--seed", 3)
        assert out == Path("out/sample") / f"{name}-3000-ema-nfe1-seed3"
        # the EMA network with the authors' method, random ImageNet classes (the uncond one too: its labels
        # are classes, it was only trained without guidance), decoded
        cfg = soflow.preset("imagenet_released", total_steps=400_000,
                            **({} if null_label else dict(guidance_scale=1.0, guidance_mix=1.0, label_drop=0.0,
                                                         guidance_t_max=1.0)))
        x1, _ = sample.image_noise(3, range(6), (4, 8, 8))
        y = sample.image_labels(3, range(6), "random", 1000)
        with torch.no_grad():
            want = expected_uint8(vae.decode(soflow.sample(ema, cfg, x1, y) / 0.18215).sample)
        assert got["arr_0"].shape == (6, 16, 16, 3) and got["arr_1"].tolist() == y.tolist()
        assert_images_close(got["arr_0"], want)
    # another seed, another sampler: other folders, the first kept
    out2, again = run_sample("zlab-princeton/SoFlow/Tiny-uncond", "--vae", vae_path, "--num_samples", 6, "--seed", 4)
    out3, _ = run_sample(root / "Tiny-uncond", "--vae", vae_path, "--num_samples", 2, "--steps", 2, "--grid", 0)
    assert out2.name == "Tiny-uncond-3000-ema-nfe1-seed4" and out3.name == "Tiny-uncond-3000-ema-nfe2-renoise-seed0"
    assert np.abs(again["arr_0"].astype(int) - got["arr_0"]).mean() > 5
    assert np.array_equal(load_npz(out / "samples.npz")["arr_0"], got["arr_0"])
    # the unguided network has no null label to sample with
    with pytest.raises(SystemExit, match="--classes null: this network has no null label"):
        sample.main(["Tiny-uncond", "--vae", str(vae_path), "--classes", "null"])


def test_sample_cifar_layout_by_name(hub, tmp_path, monkeypatch):
    """The CIFAR10 path (pixels, unconditional, no VAE) with the release's U-Net shrunk for speed."""
    root, _ = hub
    small = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), noise_channels=16)
    monkeypatch.setattr(checkpoints.unet, "UNet", functools.partial(unet.UNet, **small))
    net, ema = (randomize(unet.UNet(img_resolution=8, **small), s) for s in (3, 4))
    release(root, "Small-uncond", with_fields(CIFAR_YAML, data_size=8), net, ema, steps=800000)
    monkeypatch.chdir(tmp_path)
    out, got = run_sample("Small-uncond", "--num_samples", 5, "--batch_size", 2, "--weights", "model")
    x1, _ = sample.image_noise(0, range(5), (3, 8, 8))
    assert out.name == "Small-uncond-800000-model-nfe1-seed0" and "arr_1" not in got
    assert_images_close(got["arr_0"], expected_uint8(soflow.sample(net, soflow.preset("cifar10_released"), x1)))

# -----------------------------------------------------------------------------
# Fine-tuning from a released configuration


def test_finetune_from_a_released_configuration(hub, latents, tmp_path, monkeypatch):  # noqa: F811
    root, _ = hub
    args = dict(input_size=8, in_channels=4, num_classes=2, depth=1, hidden_size=32, num_heads=2)   # the DIT run's
    source = {k: randomize(dit.dit_from_name("T/2", **args), s) for k, s in (("model", 5), ("ema", 6))}
    release(root, "Tiny-cond", with_fields(IMAGENET_YAML, model_type="DiT-T-2", data_size=8), source["model"],
            source["ema"], steps=1000)
    seen = {}

    def init_weights(net, ema, src):          # the weights the run starts from
        real_init(net, ema, src)
        seen.update(model={k: v.clone() for k, v in net.state_dict().items()},
                    ema={k: v.clone() for k, v in ema.net.state_dict().items()})
    real_init = trainer.init_weights
    monkeypatch.setattr(trainer, "init_weights", init_weights)
    monkeypatch.chdir(tmp_path)
    assert run_imagenet(latents, tmp_path / "a", "--steps=4", "--init_from=Tiny-cond") == 4
    for which in ("model", "ema"):            # step 0: the source's weights, strictly
        assert seen[which].keys() == source[which].state_dict().keys()
        assert all(torch.equal(seen[which][k], v) for k, v in source[which].state_dict().items())
    a = load(tmp_path / "a" / "ckpt.pt")
    assert a["step"] == 4 and a["config"]["train"]["init_from"] == "Tiny-cond"     # a new run, its source recorded
    assert all(s["step"].item() == 4 for s in a["optimizer"]["state"].values())     # a new optimizer
    moved = [k for k, v in source["model"].state_dict().items() if not torch.equal(a["model"][k], v)]
    assert len(moved) > 10 and "final_layer.linear.weight" in moved                 # training moves the weights
    # interrupted at step 2 and run again: it resumes (not re-initialised) and ends bit for bit the same
    seen.clear()
    run_imagenet(latents, tmp_path / "b", "--steps=4", "--init_from=Tiny-cond", "--stop_at=2")
    assert seen and load(tmp_path / "b" / "ckpt.pt")["step"] == 2
    seen.clear()
    run_imagenet(latents, tmp_path / "b", "--steps=4", "--init_from=Tiny-cond")
    assert not seen
    assert_same_state(a, load(tmp_path / "b" / "ckpt.pt"))
    # a source that does not fit the run's network: one line naming the difference
    with pytest.raises(SystemExit, match=r"^error: --init_from=Tiny-cond \['model'\] does not fit .*shapes: "):
        run_imagenet(latents, tmp_path / "c", "--steps=1", "--init_from=Tiny-cond", "--hidden_size=64", "--num_heads=4")
    # a release trained without label dropout has no null-label row: the message says what to add, and it works
    plain = dit.dit_from_name("T/2", **args, null_label=False)
    release(root, "Tiny-nodrop", with_fields(IMAGENET_YAML, model_type="DiT-T-2", data_size=8, **UNGUIDED), plain, plain)
    with pytest.raises(SystemExit, match=r"embedding_table.*add --null_label False$"):
        run_imagenet(latents, tmp_path / "d", "--steps=1", "--init_from=Tiny-nodrop")
    assert run_imagenet(latents, tmp_path / "d", "--steps=1", "--init_from=Tiny-nodrop", "--null_label=False",
                        "--method=imagenet_released", "--guidance_scale=1", "--guidance_mix=1", "--label_drop=0") == 1

# -----------------------------------------------------------------------------
# Any conditional checkpoint: grayscale pixels, a few classes


def test_conditional_pixel_checkpoint_rows_per_class(tmp_path):
    small = dict(img_resolution=8, in_channels=1, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                 attn_resolutions=(4,), noise_channels=16, dropout=0.0, num_classes=3)
    net = randomize(unet.UNet(**small), 7)
    cfg = soflow.preset("cifar10", num_classes=3)
    save_project(tmp_path / "digits.pt", net, net, cfg,
                 {"kind": "pixels", "dataset": "digits", "image_size": 8, "channels": 1, "num_classes": 3})
    out, got = run_sample(tmp_path / "digits.pt", "--classes", "all", "--num_samples", 7, "--out_dir", tmp_path / "s")
    x1, _ = sample.image_noise(0, range(7), (1, 8, 8))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    assert got["arr_1"].tolist() == y.tolist() and got["arr_0"].shape == (7, 8, 8, 3)
    assert_images_close(got["arr_0"], np.repeat(expected_uint8(soflow.sample(net, cfg, x1, y)), 3, axis=-1))
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (3 * 34 + 2, 2 * 34 + 2, 3)                      # 3 rows (classes) of 7 // 3 = 2 images
    for c in range(3):                                                     # 8 pixels drawn as 32
        for j in range(2):
            tile = got["arr_0"][c + 3 * j].repeat(4, 0).repeat(4, 1)
            assert np.array_equal(grid[2 + 34 * c:34 * (c + 1), 2 + 34 * j:34 * (j + 1)], tile)
    _, got = run_sample(tmp_path / "digits.pt", "--num_samples", 40, "--out_dir", tmp_path / "r")   # random classes
    assert sorted(set(got["arr_1"].tolist())) == [0, 1, 2]
