"""
DiT: the diffusion transformer of the ImageNet 256 experiments, as a SoFlow network
F(x, t, s, y) on 32x32x4 SD-VAE latents.

The architecture is DiT with adaLN-Zero blocks (Peebles & Xie, "Scalable Diffusion
Models with Transformers"). SoFlow's only change is a second time input: the
conditioning vector of every block is

    c = emb_t(t) + emb_s(t - s) + emb_y(y)                       (SPEC section 8)

with two separate timestep embedders and a label table whose last row is the null
label (classifier-free guidance is trained in, Sec. 4.3). The output has as many
channels as the input (no learned variance).

Parameter names and shapes are those of the released checkpoints (SPEC section 9:
the facebookresearch DiT layout with timm-style submodule names), so a released
state dict loads with strict=True; `load_released_state_dict` strips the wrapper's
'network.' prefix.

    model = dit_from_name('B/2')                     # the paper's configurations, Table 4
    F = model(x, t, s, y)                            # x (N, 4, 32, 32), t, s (N,), y (N,) or None
    flops(model)                                     # multiply-adds per image, for MFU figures
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Configurations. The five of the paper's Table 4, plus tiny ones for tests and CPU
# runs. Every other constructor argument keeps its default (32x32x4 latents, 1000
# classes, MLP ratio 4) unless overridden: dit_from_name('T/2', num_classes=10).

DIT_CONFIGS = {
    "B/4":  dict(depth=12, hidden_size=768,  num_heads=12, patch_size=4),
    "B/2":  dict(depth=12, hidden_size=768,  num_heads=12, patch_size=2),
    "M/2":  dict(depth=16, hidden_size=1024, num_heads=16, patch_size=2),
    "L/2":  dict(depth=24, hidden_size=1024, num_heads=16, patch_size=2),
    "XL/2": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2),
    # tiny, for tests and CPU runs (same latents, about 1.5M parameters)
    "T/4":  dict(depth=4, hidden_size=128, num_heads=4, patch_size=4),
    "T/2":  dict(depth=4, hidden_size=128, num_heads=4, patch_size=2),
}

# the constructor's defaults for everything a configuration does not name
DIT_DEFAULTS = dict(input_size=32, in_channels=4, mlp_ratio=4.0, num_classes=1000, attn="fused")

ATTENTION_MODES = ("fused", "math")


def dit_from_name(name, **overrides):
    """A DiT by configuration name ('B/4', 'B/2', 'M/2', 'L/2', 'XL/2', 'T/4', 'T/2'),
    with any constructor argument overridden: dit_from_name('B/2', attn='math')."""
    if name not in DIT_CONFIGS:
        raise ValueError(f"unknown DiT configuration {name!r}; choose from {list(DIT_CONFIGS)}")
    return DiT(**{**DIT_CONFIGS[name], **overrides})


def set_attention(model, mode):
    """Switch every attention layer of `model` to 'fused' (F.scaled_dot_product_attention)
    or 'math' (explicit softmax(Q K^T / sqrt(d)) V, which torch.func.jvp can differentiate
    in forward mode). Both compute the same function. Returns the model."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode {mode!r}: choose from {ATTENTION_MODES}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.mode = mode
    if isinstance(getattr(model, "config", None), dict) and "attn" in model.config:
        model.config["attn"] = mode
    return model


def strip_prefix(state_dict, prefix="network."):
    """The released checkpoints store the network inside a wrapper module, so every key
    starts with 'network.'. Returns the state dict with that prefix removed (keys without
    it are kept as they are)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_released_state_dict(model, state_dict, prefix="network."):
    """Load a released state dict (the 'model' or 'ema_model' entry of a released
    checkpoint) into `model`, strictly: every key and shape must match. Works for the DiT
    and the U-Net alike."""
    return model.load_state_dict(strip_prefix(state_dict, prefix), strict=True)

# -----------------------------------------------------------------------------
# Embeddings.

def timestep_embedding(t, dim=256, max_period=10000):
    """Sinusoidal features of the raw time t in [0, 1], shape (N, dim): cos half first,
    frequencies max_period^(-i / (dim/2)), i = 0 .. dim/2 - 1 (as the released network)."""
    half = dim // 2
    dtype = torch.promote_types(t.dtype, torch.float32)        # never in half precision
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features, then Linear-SiLU-Linear. One for t, one for t - s."""

    def __init__(self, hidden_size, frequency_size=256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.frequency_size).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """A table of num_classes + 1 rows; the last row is the null label (no class)."""

    def __init__(self, num_classes, hidden_size):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y):
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens, by a strided convolution: (N, C, H, W) ->
    (N, T, D) with T = (H/p)(W/p), tokens in row-major order."""

    def __init__(self, patch_size, in_channels, hidden_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_pos_embed_2d(dim, grid_size):
    """The fixed 2-D sin-cos position embedding of DiT (from MAE), shape (grid^2, dim).
    Token k = (row i, column j) with k = i * grid + j; the first dim/2 channels encode the
    column j, the last dim/2 the row i, each as [sin(pos w), cos(pos w)] with
    w = 10000^(-m / (dim/4)), m = 0 .. dim/4 - 1."""
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be a multiple of 4 for the 2-D sin-cos embedding")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def embed_1d(p):
        out = p.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([embed_1d(cols), embed_1d(rows)], dim=1).float()

# -----------------------------------------------------------------------------
# Transformer blocks.

def modulate(x, shift, scale):
    """adaLN: x * (1 + scale) + shift, per sample, broadcast over the tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention with a fused q, k, v projection (timm layout: the 3D
    outputs of qkv are q, k, v, each split into heads)."""

    def __init__(self, dim, num_heads, mode="fused"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode {mode!r}: choose from {ATTENTION_MODES}")
        self.num_heads = num_heads
        self.mode = mode
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        N, T, D = x.shape
        q, k, v = self.qkv(x).reshape(N, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.mode == "fused":
            x = F.scaled_dot_product_attention(q, k, v)
        else:   # the same function in plain operations (forward-mode autodiff works through them)
            w = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            x = w.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(N, T, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero: c gives a shift, a scale and a gate for
    the attention branch, then the same three for the MLP branch. Zero-initialised
    modulation makes every block the identity at initialisation."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, attn="fused"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale), then a linear map of each token to its p x p x C patch."""

    def __init__(self, dim, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))

# -----------------------------------------------------------------------------
# The network.

class DiT(nn.Module):
    """F(x, t, s, y): x (N, C, H, W) latents, t and s (N,) times in [0, 1], y (N,) int64
    labels in [0, num_classes] (num_classes = the null label) or None for the null label.
    Returns (N, C, H, W)."""

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, num_classes=1000, attn="fused"):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not divisible by the patch size {patch_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes = {num_classes}: must be >= 1 (the null label is index num_classes)")
        # the constructor arguments, stored in checkpoints so that sample.py can rebuild the net
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                           mlp_ratio=mlp_ratio, num_classes=num_classes, attn=attn)
        self.in_channels = self.out_channels = in_channels
        self.input_size, self.patch_size, self.num_classes = input_size, patch_size, num_classes
        grid = input_size // patch_size

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)       # embeds t
        self.s_embedder = TimestepEmbedder(hidden_size)       # embeds t - s
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        # fixed 2-D sin-cos positions: a frozen parameter, so that it is in the state dict
        # (and in the parameter counts) exactly as in the released checkpoints
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, attn) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self):
        """DiT's initialisation: xavier-uniform linears with zero biases, the patch
        embedding like a linear, N(0, 0.02) label table and timestep MLPs, and zero adaLN
        modulations and output layer, so that F = 0 and every block is the identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.input_size // self.patch_size))
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for emb in (self.t_embedder, self.s_embedder):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for p in (*self.final_layer.adaLN_modulation[-1].parameters(), *self.final_layer.linear.parameters()):
            nn.init.zeros_(p)

    def unpatchify(self, x):
        """(N, T, p*p*C) tokens -> (N, C, H, W) image; each token holds its patch as (p, p, C)."""
        p, c, g = self.patch_size, self.out_channels, self.input_size // self.patch_size
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x, t, s, y=None):
        N = x.shape[0]
        if tuple(x.shape[1:]) != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(f"x has shape {tuple(x.shape)}; this DiT takes "
                             f"(N, {self.in_channels}, {self.input_size}, {self.input_size})")
        if t.shape != (N,) or s.shape != (N,):
            raise ValueError(f"t and s must have shape ({N},), got {tuple(t.shape)} and {tuple(s.shape)}")
        if y is None:
            y = torch.full((N,), self.num_classes, dtype=torch.long, device=x.device)
        elif y.shape != (N,) or y.is_floating_point():
            raise ValueError(f"y must be integer labels of shape ({N},), got {y.dtype} {tuple(y.shape)}")

        x = self.x_embedder(x) + self.pos_embed                              # (N, T, D)
        c = self.t_embedder(t) + self.s_embedder(t - s) + self.y_embedder(y)  # (N, D)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))

# -----------------------------------------------------------------------------
# Compute per forward pass, for MFU figures.

def flops(model_or_config, batch=1):
    """Multiply-adds of one forward pass over `batch` images, counted analytically in the
    DiT / fvcore convention (one multiply-add = 1 FLOP; the matrix products only: linears,
    the patch convolution, and attention's Q K^T and A V). This is the 'GFLOPs' column of
    the paper's Table 4 (SPEC section 8).

    For an MFU figure the hardware arithmetic is twice this (a multiply-add is 2 operations),
    and a training step costs about 3 forwards of it (forward + backward), plus one more for
    each extra forward pass the loss makes: SoFlow's consistency target and, with guidance,
    the unconditional velocities are gradient-free forwards (see soflow.soflow_loss).

    model_or_config: a DiT, its .config dict, or a configuration name ('B/2')."""
    if isinstance(model_or_config, str):
        if model_or_config not in DIT_CONFIGS:
            raise ValueError(f"unknown DiT configuration {model_or_config!r}; choose from {list(DIT_CONFIGS)}")
        cfg = {**DIT_DEFAULTS, **DIT_CONFIGS[model_or_config]}
    elif isinstance(model_or_config, DiT):
        cfg = model_or_config.config
    else:
        cfg = {**DIT_DEFAULTS, **model_or_config}
    D, L, p, C = cfg["hidden_size"], cfg["depth"], cfg["patch_size"], cfg["in_channels"]
    T = (cfg["input_size"] // p) ** 2
    H = int(D * cfg["mlp_ratio"])
    embed = T * (C * p * p) * D + 2 * (256 * D + D * D)          # patch conv, two time MLPs
    block = (6 * D * D                                            # adaLN modulation (per image)
             + T * (3 * D * D + D * D)                            # qkv and output projections
             + 2 * T * T * D                                      # Q K^T and A V over all heads
             + T * 2 * D * H)                                     # MLP
    final = 2 * D * D + T * D * (p * p * C)
    return batch * (embed + L * block + final)

