"""
Checkpoints and the files around them: reading and writing them, rebuilding a network
and its SoFlow settings from one, the SD-VAE, and image grids. Used by the training
scripts, sample.py and bench.py.

Two layouts:
  ours:      {'model', 'ema', 'optimizer', 'step', 'config'}, where config holds
             'net' (the network's constructor arguments and its 'kind': 'dit' | 'unet'),
             'soflow' (the SoFlowConfig), 'data' and 'train' (the script's settings);
  released:  the authors' files, {'model', 'ema_model', 'optimizer', 'finished_steps',
             'finished_epochs'}, state dicts under the prefix 'network.' and no config
             (see the authors' train.py: the network sits in a wrapper module).
A checkpoint is data, never code: every load is torch.load(..., weights_only=True).
"""

import os
import pickle
import tempfile
import zipfile

import numpy as np
import torch

import dit
import soflow
import unet

LATENT_SCALE = 0.18215                     # SD-VAE latents are scaled by this (the authors' train.py)
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"  # the VAE of the ImageNet experiments
RELEASED_METHOD = {"dit": "imagenet_released", "unet": "cifar10_released"}


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
    """The local file of a checkpoint given by its path."""
    if not os.path.isfile(source):
        raise FileNotFoundError(f"checkpoint {source} does not exist")
    return source


def load(path):
    """A checkpoint as tensors and plain containers (memory-mapped: the processes of a node
    share the page cache, and a 10 GB released file costs only what is read). Raises a
    ValueError that names the file when it is missing, empty, truncated or holds code."""
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


def strip_prefix(state_dict, prefix="network."):
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def build(config):
    """(network, SoFlowConfig, data settings) from a checkpoint's config."""
    net_args = dict(config["net"])
    kind = net_args.pop("kind")
    if kind not in ("dit", "unet"):
        raise ValueError(f"checkpoint config: network kind {kind!r}, expected 'dit' or 'unet'")
    net = dit.DiT(**net_args) if kind == "dit" else unet.UNet(**net_args)
    return net, soflow.SoFlowConfig(**config["soflow"]), dict(config.get("data") or {})


def build_released(model, net_args=None):
    """The network, method and data settings of a released checkpoint trained as
    `model`: a DiT name ('B/4' ... 'XL/2', ImageNet latents) or 'unet' (CIFAR-10)."""
    net_args = dict(net_args or {})
    if model == "unet":
        net = unet.UNet(**net_args)
        return net, soflow.preset(RELEASED_METHOD["unet"]), {"kind": "pixels", "dataset": "cifar10"}
    net = dit.dit_from_name(model, **net_args)
    cfg = soflow.preset(RELEASED_METHOD["dit"], num_classes=net.num_classes)
    return net, cfg, {"kind": "latents", "vae": DEFAULT_VAE, "latent_scale": LATENT_SCALE}


def weights_of(ckpt, path, which="ema"):
    """The state dict `which` ('ema' or 'model') of a checkpoint of either layout."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or not ({"ema", "ema_model"} & set(ckpt)):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is neither our checkpoint (keys 'model', 'ema', 'config') nor a released "
                         f"one (keys 'model', 'ema_model'); it has {keys}")
    if "ema_model" in ckpt:
        return strip_prefix(ckpt["ema_model" if which == "ema" else "model"])
    return ckpt[which]


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
                             ("shapes", shapes), ("missing", missing),
                             ("unexpected", unexpected)) if items))
    net.load_state_dict(state_dict, strict=True)      # a float64 EMA is cast to the network's dtype
    return net


def load_model(path, weights="ema", model=None, net_args=None):
    """(network in eval mode on the CPU, SoFlowConfig, data settings, description) of a
    checkpoint: ours carries its config; a released one needs `model` (build_released)."""
    ckpt = load(path)
    released = isinstance(ckpt, dict) and "ema_model" in ckpt
    state = weights_of(ckpt, path, weights)
    if released:
        if model is None:
            raise ValueError(f"{path} is a released checkpoint, which has no config: name its configuration "
                             f"(--model=XL/2 for an ImageNet DiT, one of {list(dit.DIT_CONFIGS)}, or --model=unet)")
        net, cfg, data = build_released(model, net_args)
        desc = f"released {model}, {weights} weights"
    else:
        if model is not None or net_args:
            raise ValueError(f"{path} carries its config: --model and --net_args are for released checkpoints")
        net, cfg, data = build(ckpt["config"])
        desc = f"{ckpt['config'].get('script', 'our')} checkpoint at step {ckpt.get('step')}, {weights} weights"
    load_state(net, state, f"{path} ['{weights}']")
    return net.eval().requires_grad_(False), cfg, data, desc


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
    """uint8 images (N, H, W, C) -> one PNG, nrow images a row, 2-pixel borders; atomic."""
    from PIL import Image
    from torchvision.utils import make_grid
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2)
    grid = make_grid(x, nrow=nrow, padding=2).permute(1, 2, 0).numpy()
    atomic_write(path, lambda f: Image.fromarray(grid).save(f, format="PNG"))
