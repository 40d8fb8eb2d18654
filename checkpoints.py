"""
Checkpoints and the files around them: reading and writing them, rebuilding a network and its
SoFlow settings from one, the authors' released models, the SD-VAE, and image grids. Ours: {'model',
'ema', 'optimizer', 'step', 'config'}, config holding 'net' (the constructor's arguments and 'kind':
'dit' | 'unet'), 'soflow', 'data' and 'train'. Released (the authors' train.py): {'model', 'ema_model',
'optimizer', 'finished_steps', 'finished_epochs'}, the network's weights under 'network.', stored as
NAME/ckpts/STEPS.pt beside NAME/config.yaml. Every load is torch.load(..., weights_only=True).
"""

import os
import pickle
import re
import tempfile
import zipfile

import numpy as np
import torch
import yaml

import dit
import soflow
import unet

LATENT_SCALE = 0.18215                     # SD-VAE latents are scaled by this (the authors' train.py)
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"  # the VAE of the ImageNet experiments
HUB_REPO = "zlab-princeton/SoFlow"         # the authors' release on the Hugging Face hub


def atomic_write(path, write, text=False):
    """write(f) into a temporary file of the same folder, flushed to disk, then renamed over
    `path`: a crash at any moment leaves either the old file or the new one, whole."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w" if text else "wb", newline="" if text else None) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def resolve(source):
    """The checkpoint file of a path; of a folder in the authors' layout (config.yaml, ckpts/STEPS.pt): the most steps;
    of a released configuration ('XL-2-cond', 'zlab-princeton/SoFlow/XL-2-cond'): its folder, fetched once from the hub."""
    source, name = str(source), str(source).removeprefix(HUB_REPO + "/")
    if not os.path.exists(source) and re.fullmatch(r"[\w-]+", name):
        import huggingface_hub
        try:
            source = os.path.join(huggingface_hub.snapshot_download(
                HUB_REPO, allow_patterns=[f"{name}/config.yaml", f"{name}/ckpts/*.pt"]), name)
        except OSError as e:    # offline and not in the cache, no such repository, ...
            raise FileNotFoundError(f"cannot fetch {name!r} from {HUB_REPO} ({str(e).splitlines()[0][:200]}); with "
                                    f"internet: hf download {HUB_REPO} --include '{name}/*' --local-dir SoFlow") from None
    if os.path.isfile(source):
        return source
    ckpts = os.path.join(source, "ckpts")
    steps = [int(f[:-3]) for f in os.listdir(ckpts) if re.fullmatch(r"\d+\.pt", f)] if os.path.isdir(ckpts) else []
    if not (steps and os.path.isfile(os.path.join(source, "config.yaml"))):
        raise FileNotFoundError(f"{source}: no such checkpoint, nor the folder of a released configuration (config.yaml, "
                                f"ckpts/STEPS.pt; on the hub: https://huggingface.co/{HUB_REPO}/tree/main)")
    return os.path.join(ckpts, f"{max(steps)}.pt")


def load(path):
    """A checkpoint as tensors and plain containers, memory-mapped (a 10 GB released file costs only what
    is read); a ValueError that names the file when it is missing, empty, truncated or holds code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): a copy or a save that did not finish")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} holds more than tensors and plain containers, so it is not loaded "
                         f"(weights_only=True): {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"checkpoint {path} cannot be read, it is truncated or not a checkpoint "
                         f"({str(e).splitlines()[0]})") from None


def build(config):
    """(network, SoFlowConfig, data settings) from a checkpoint's config."""
    net_args = dict(config["net"])
    kind = net_args.pop("kind")
    if kind not in ("dit", "unet"):
        raise ValueError(f"checkpoint config: network kind {kind!r}, expected 'dit' or 'unet'")
    net = dit.DiT(**net_args) if kind == "dit" else unet.UNet(**net_args)
    return net, soflow.SoFlowConfig(**config["soflow"]), dict(config.get("data") or {})


def build_released(model, net_args=None):
    """(network, SoFlowConfig, data settings) of a bare released file trained as `model`: 'B/4' ... 'XL/2' or 'unet'."""
    try:
        net = unet.UNet(**(net_args or {})) if model == "unet" else dit.dit_from_name(model, **(net_args or {}))
    except TypeError as e:      # an argument the constructor does not take
        raise ValueError(f"net_args {net_args}: {e}") from None
    if model == "unet":
        return net, soflow.preset("cifar10_released"), dict(kind="pixels", dataset="cifar10", num_classes=None)
    return net, soflow.preset("imagenet_released", num_classes=net.num_classes), dict(kind="latents", vae=DEFAULT_VAE,
                                                                                       latent_scale=LATENT_SCALE)

# The authors' config.yaml (their train.py's arguments) in our names: the fields that make the network or
# the method ('Triangular': what their yaml's comments call 'Trig'), then those that do not.
YAML_FIELDS = {"schedule": "noising_type", "param": "coefficient_type", "fm_ratio": "velocity_loss_ratio", "p": "p",
               "eps": "eps", "mu_fm": "time_mean[0]", "mu_s": "time_mean[1]", "mu_t": "time_mean[2]", "sigma_fm":
               "time_std[0]", "sigma_s": "time_std[1]", "sigma_t": "time_std[2]", "guidance_scale": "cfg_scale",
               "guidance_mix": "mix_ratio", "label_drop": "cfg_drop_rate", "guidance_t_max": "cfg_decay_time",
               "r_schedule": "l_schedule", "r_init": "l_init_ratio", "r_end": "l_end_ratio", "total_steps": "total_steps"}
YAML_CHOICES = {"model_type": {"UNet": "unet", **{f"DiT-{k.replace('/', '-')}": k for k in dit.DIT_CONFIGS}},
                "dataset_type": {"Imagenet": "latents", "CIFAR10": "pixels"},
                "noising_type": {"Linear": "linear", "Trig": "trig", "Triangular": "trig"},
                "coefficient_type": {"Euler": "euler", "Trig": "trig", "Triangular": "trig"},
                "l_schedule": {"Const": "constant", "Linear": "linear", "Cosine": "cosine", "Exponent": "exponential"}}
YAML_TRAINING = """working_dir dataset_path ema_decay_rate learning_rate betas weight_decay batch_size num_workers
                   prefetch_factor eval_steps eval_batch_size eval_NFE eval_demo_steps eval_demo_shape
                   ckpt_saving_steps logging_steps seed""".split()


def from_yaml(y, where="config.yaml"):
    """(network, SoFlowConfig, data settings) of a released configuration's config.yaml (as a dict), as
    the authors' models.py and train.py build them; a ValueError names `where` and the field it cannot map."""
    def check(ok, message):
        if not ok:
            raise ValueError(f"{where}: {message}")
    check(isinstance(y, dict), "not a mapping of field: value")
    used = {"data_size", *YAML_CHOICES, *(v[:-3] if v.endswith("]") else v for v in YAML_FIELDS.values())}
    check(not (unknown := sorted(set(y) - used - set(YAML_TRAINING))), f"unknown field {unknown[:1]}")
    check(not (missing := sorted(used - set(y))), f"no field {missing[:1]}")
    for k, table in YAML_CHOICES.items():
        check(y[k] in list(table), f"{k}: {y[k]!r}, expected one of {list(table)}")
    for k in ("time_mean", "time_std"):
        check(isinstance(y[k], list) and len(y[k]) == 3, f"{k}: {y[k]!r}, expected [flow matching, s, t]")
    latents, size, scale, drop = y["dataset_type"] == "Imagenet", y["data_size"], y["cfg_scale"], y["cfg_drop_rate"]
    check((y["model_type"] == "UNet") != latents, f"model_type: {y['model_type']} with dataset_type {y['dataset_type']} "
          "(the authors' models.py: the U-Net for CIFAR10, a DiT for Imagenet)")
    check(not latents or (scale == 1) == (drop == 0), f"cfg_drop_rate: {drop} with cfg_scale {scale} (the authors' "
          "train.py drops labels exactly when it trains guidance)")
    fields = {ours: y[k[:-3]][int(k[-2])] if k.endswith("]") else YAML_CHOICES[k][y[k]] if k in YAML_CHOICES else y[k]
              for ours, k in YAML_FIELDS.items()}
    # ImageNet's classes (uncond too: unguided); their train.py guides, mixes, drops labels only if cfg_scale > 1
    fields.update(num_classes=1000 if latents else None, **(dict(guidance_mix=1.0, label_drop=0.0) if scale == 1 else {}))
    try:
        cfg = soflow.SoFlowConfig(**fields)
        net = (dit.dit_from_name(YAML_CHOICES["model_type"][y["model_type"]], input_size=size, in_channels=4,
                                 num_classes=1000, null_label=drop > 0) if latents   # their dit.py's null row
               else unet.UNet(img_resolution=size))     # 3 channels, augment_dim 6, unconditional: the release's
    except ValueError as e:     # named as the yaml names it: 'SoFlowConfig.FIELD = ...' or the network's sizes
        check(False, f"{YAML_FIELDS.get(str(e).split()[0].split('.')[-1], 'data_size')}: {e}")
    data = dict(kind="latents", vae=DEFAULT_VAE, latent_scale=LATENT_SCALE) if latents else dict(kind="pixels",
                                                                                                 dataset="cifar10")
    return net, cfg, {**data, "image_size": 8 * size if latents else size, "num_classes": fields["num_classes"]}


def weights_of(ckpt, path, which="ema"):
    """The state dict `which` ('ema' or 'model') of a checkpoint of either layout."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or not ({"ema", "ema_model"} & set(ckpt)):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is neither our checkpoint (keys 'model', 'ema', 'config') nor a released "
                         f"one (keys 'model', 'ema_model'); it has {keys}")
    return dit.strip_prefix(ckpt["ema_model" if which == "ema" else "model"]) if "ema_model" in ckpt else ckpt[which]


def load_state(net, state_dict, what):
    """Load strictly; on a mismatch, one message that names what differs."""
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs network {tuple(own[k].shape)}" for k in own
              if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        some = lambda items: ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
        raise ValueError(f"{what} does not fit the network ({type(net).__name__} {net.config}): "
                         + "; ".join(f"{name}: {some(items)}" for name, items in (
                             ("shapes", shapes), ("missing", missing), ("unexpected", unexpected)) if items))
    net.load_state_dict(state_dict, strict=True)      # a float64 EMA is cast to the network's dtype
    return net


def load_model(source, weights="ema", model=None, net_args=None):
    """(network in eval mode on the CPU, SoFlowConfig, data settings, description) of a checkpoint (see
    resolve): ours carries its config; a released one is built from its folder's config.yaml, or, a
    bare file, from `model` (build_released)."""
    path = resolve(source)
    ckpt = load(path)
    state = weights_of(ckpt, path, weights)
    folder = os.path.dirname(os.path.dirname(os.path.abspath(path)))      # NAME of NAME/ckpts/STEPS.pt
    settings = os.path.join(folder, "config.yaml")
    if "ema_model" not in ckpt and (model is not None or net_args):
        raise ValueError(f"{path} carries its config: --model and --net_args are for bare released files")
    if "ema_model" not in ckpt:
        (net, cfg, data), desc = build(ckpt["config"]), f"{ckpt['config'].get('script')} checkpoint, step {ckpt.get('step')}"
    elif model is not None:
        (net, cfg, data), desc = build_released(model, net_args), f"released file {path} read as {model}"
    elif os.path.basename(os.path.dirname(path)) == "ckpts" and os.path.isfile(settings):
        try:
            y = yaml.safe_load(open(settings).read())
        except yaml.YAMLError as e:
            raise ValueError(f"{settings}: not YAML ({str(e).splitlines()[0]})") from None
        (net, cfg, data), desc = from_yaml(y, settings), f"released {os.path.basename(folder)}, {os.path.basename(path)}"
    else:
        raise ValueError(f"{path} is a released checkpoint outside its folder (NAME/config.yaml, NAME/ckpts/STEPS.pt): "
                         f"name its configuration, --model one of {list(dit.DIT_CONFIGS)} (ImageNet) or unet (CIFAR-10)")
    load_state(net, state, f"{path} ['{weights}']")
    return net.eval().requires_grad_(False), cfg, data, f"{desc}, {weights} weights"


def load_vae(name, device, dtype=torch.float32):
    """The SD-VAE (a diffusers AutoencoderKL) from a hub id or a local folder; a ValueError
    with the way to get it when it cannot be loaded (nothing is downloaded offline)."""
    from diffusers.models import AutoencoderKL
    try:
        vae = AutoencoderKL.from_pretrained(name, torch_dtype=dtype, low_cpu_mem_usage=False)
    except Exception as e:      # offline, missing folder, bad files: the same way out
        raise ValueError(f"cannot load the VAE {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         f"on a machine with internet run huggingface-cli download {DEFAULT_VAE} --local-dir "
                         f"sd-vae-ft-mse, copy the folder here and pass its path") from None
    return vae.to(device).eval().requires_grad_(False)


def to_uint8(x):
    """Images in [-1, 1] (N, C, H, W) -> uint8 (N, H, W, C), rounded as the authors' inference.py."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def save_grid(path, images, nrow=8):
    """uint8 images (N, H, W, C) -> one PNG, nrow images a row, 2-pixel borders, small ones (8x8 digits)
    drawn larger; atomic."""
    from PIL import Image
    from torchvision.utils import make_grid
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2)
    x = x.repeat_interleave(k := max(1, 32 // x.shape[-1]), 2).repeat_interleave(k, 3)
    grid = make_grid(x, nrow=nrow, padding=2).permute(1, 2, 0).numpy()
    atomic_write(path, lambda f: Image.fromarray(grid).save(f, format="PNG"))
