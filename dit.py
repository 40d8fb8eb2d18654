"""
DiT: the diffusion transformer of the ImageNet 256 experiments, as a SoFlow network
F(x, t, s, y) on 32x32x4 SD-VAE latents.

DiT with adaLN-Zero blocks (Peebles & Xie, "Scalable Diffusion Models with
Transformers"). SoFlow's one change (the authors' dit.py) is a second time input:
every block is conditioned on c = emb_t(t) + emb_s(t - s) + emb_y(y), with two timestep
embedders and a label table whose row num_classes is the null label that classifier-free
guidance trains (Sec. 4.3). The authors' table has that row only when the label-dropout
rate is above 0: null_label=False builds it without, the layout of a configuration
trained without label dropout. No learned variance: the output has the input's channels.

Parameter names and shapes are those of the released checkpoints (facebookresearch DiT's
layout, timm-style names): load_released_state_dict loads one strictly.

    model = dit_from_name('B/2')          # the paper's configurations, Table 4
    F = model(x, t, s, y)                 # x (N, 4, 32, 32), t, s (N,), y (N,) or None
    flops(model)                          # multiply-adds per image, for MFU figures
"""

import inspect
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

# The paper's Table 4, plus tiny ones (about 1.5M parameters) for tests and CPU runs. The
# other constructor arguments keep their defaults unless overridden: ('T/2', num_classes=10).
DIT_CONFIGS = {
    "B/4":  dict(depth=12, hidden_size=768,  num_heads=12, patch_size=4),
    "B/2":  dict(depth=12, hidden_size=768,  num_heads=12, patch_size=2),
    "M/2":  dict(depth=16, hidden_size=1024, num_heads=16, patch_size=2),
    "L/2":  dict(depth=24, hidden_size=1024, num_heads=16, patch_size=2),
    "XL/2": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2),
    "T/4":  dict(depth=4, hidden_size=128, num_heads=4, patch_size=4),
    "T/2":  dict(depth=4, hidden_size=128, num_heads=4, patch_size=2),
}
ATTENTION_MODES = ("fused", "math")

def dit_from_name(name, **overrides):
    """A DiT by configuration name, any constructor argument overridden: ('B/2', attn='math')."""
    if name not in DIT_CONFIGS:
        raise ValueError(f"unknown DiT configuration {name!r}; choose from {list(DIT_CONFIGS)}")
    return DiT(**{**DIT_CONFIGS[name], **overrides})

def set_attention(model, mode):
    """Every attention layer to 'fused' (F.scaled_dot_product_attention) or 'math' (softmax(Q K^T
    / sqrt(d)) V written out, which torch.func.jvp differentiates): the same function."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode {mode!r}: choose from {ATTENTION_MODES}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.mode = mode
    if isinstance(model, DiT):
        model.config["attn"] = mode
    return model

def strip_prefix(state_dict, prefix="network."):
    """The released checkpoints keep the network in a wrapper: keys start with 'network.'."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}

def load_released_state_dict(model, state_dict, prefix="network."):
    """The 'model' or 'ema_model' entry of a released checkpoint, strictly (DiT and U-Net)."""
    return model.load_state_dict(strip_prefix(state_dict, prefix), strict=True)

# -----------------------------------------------------------------------------
# Embeddings.

def timestep_embedding(t, dim=256, max_period=10000):
    """Sinusoidal features of the raw time t in [0, 1], shape (N, dim): cos half first,
    frequencies max_period^(-i / (dim/2)), i = 0 .. dim/2 - 1 (the authors' dit.py)."""
    half = dim // 2
    dtype = torch.promote_types(t.dtype, torch.float32)        # never in half precision
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

class TimestepEmbedder(nn.Module):
    """256 sinusoidal features, then Linear-SiLU-Linear. One for t, one for t - s."""
    def __init__(self, dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))

def sincos_pos_embed_2d(dim, grid_size):
    """DiT's fixed 2-D sin-cos positions (MAE's), (grid^2, dim). Token k = i * grid + j: the first
    dim/2 channels encode j, the last i, as [sin(pos w), cos(pos w)], w = 10000^(-m / (dim/4))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")
    out = [p.reshape(-1)[:, None] * omega[None] for p in (cols, rows)]
    return torch.cat([f(o) for o in out for f in (torch.sin, torch.cos)], dim=1).float()

# -----------------------------------------------------------------------------
# Transformer blocks.

def modulate(x, shift, scale):
    """adaLN: x * (1 + scale) + shift, per sample, broadcast over the tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

class Attention(nn.Module):
    """Multi-head self-attention, q, k, v from one fused projection (timm layout)."""
    def __init__(self, dim, num_heads, mode="fused"):
        super().__init__()
        self.num_heads, self.mode = num_heads, mode
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        N, T, D = x.shape
        q, k, v = self.qkv(x).reshape(N, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.mode == "fused":
            x = F.scaled_dot_product_attention(q, k, v)
        else:   # the same function in plain operations (forward-mode autodiff works through them)
            x = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(N, T, D))

class DiTBlock(nn.Module):
    """Pre-norm block with adaLN-Zero: c gives a shift, a scale and a gate for the attention
    branch, then for the MLP branch (tanh-GELU). Zero modulation at initialisation: the identity."""
    def __init__(self, dim, num_heads, mlp_ratio=4.0, attn="fused"):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(approximate="tanh"),
                                             fc2=nn.Linear(hidden, dim)))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))

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
    """F(x, t, s, y): x (N, C, H, W) latents, t and s (N,) times in [0, 1], y (N,) int64 labels
    in [0, num_classes] (num_classes: the null label) or None (null for all). Returns x's shape."""
    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, num_classes=1000, null_label=True, attn="fused"):
        super().__init__()
        for name, v in dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels, depth=depth,
                            hidden_size=hidden_size, num_heads=num_heads, num_classes=num_classes).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: must be a positive integer")
        if input_size % patch_size:
            raise ValueError(f"patch_size={patch_size} does not divide input_size={input_size}")
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"hidden_size={hidden_size}: must be divisible by num_heads={num_heads} and by 4")
        if not (isinstance(mlp_ratio, (int, float)) and math.isfinite(mlp_ratio) and hidden_size * mlp_ratio >= 1):
            raise ValueError(f"mlp_ratio={mlp_ratio!r}: must be a positive number")
        if not isinstance(null_label, bool):
            raise ValueError(f"null_label={null_label!r}: must be True or False")
        if attn not in ATTENTION_MODES:
            raise ValueError(f"attn={attn!r}: choose from {ATTENTION_MODES}")
        # the constructor arguments, stored in checkpoints so that the network can be rebuilt
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           num_classes=num_classes, null_label=null_label, attn=attn)
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.num_classes, self.null_label = num_classes, null_label

        # patches -> tokens by a strided convolution; submodule names as in the checkpoints
        self.x_embedder = nn.ModuleDict({"proj": nn.Conv2d(in_channels, hidden_size, patch_size, patch_size)})
        self.t_embedder = TimestepEmbedder(hidden_size)       # embeds t
        self.s_embedder = TimestepEmbedder(hidden_size)       # embeds t - s
        self.y_embedder = nn.ModuleDict({"embedding_table": nn.Embedding(num_classes + null_label, hidden_size)})
        # fixed positions: a frozen parameter, in the state dict and parameter counts as released
        self.pos_embed = nn.Parameter(torch.zeros(1, (input_size // patch_size) ** 2, hidden_size), False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, attn) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self):
        """DiT's: xavier-uniform linears (the patch embedding as one), zero biases, N(0, 0.02)
        label table and t-MLP, zero adaLN and output layer: F = 0, every block the identity.
        The (t - s)-MLP keeps xavier-uniform, as in the authors' dit.py (only t_embedder is
        re-initialised there)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.input_size // self.patch_size))
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        # the s_embedder keeps xavier: the authors' dit.py re-initialises the t_embedder only
        for w in (self.y_embedder.embedding_table.weight, self.t_embedder.mlp[0].weight, self.t_embedder.mlp[2].weight):
            nn.init.normal_(w, std=0.02)
        for layer in (*(b.adaLN_modulation[-1] for b in self.blocks), self.final_layer.adaLN_modulation[-1],
                      self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x):
        """(N, T, p*p*C) tokens -> (N, C, H, W) image; each token holds its patch as (p, p, C)."""
        p, c, g = self.patch_size, self.in_channels, self.input_size // self.patch_size
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
            if not self.null_label:
                raise ValueError("y=None means the null label, and this DiT has none (null_label=False, "
                                 "trained without label dropout): pass labels y")
            y = torch.full((N,), self.num_classes, dtype=torch.long, device=x.device)
        elif y.shape != (N,) or y.is_floating_point():
            raise ValueError(f"y must be integer labels of shape ({N},), got {y.dtype} {tuple(y.shape)}")

        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed      # (N, T, D), row-major
        c = self.t_embedder(t) + self.s_embedder(t - s) + self.y_embedder.embedding_table(y)   # (N, D)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))

def flops(model_or_config, batch=1):
    """Multiply-adds of one forward pass over `batch` images of a DiT, its constructor arguments
    (.config) or a name ('B/2'), counted analytically in the DiT / fvcore convention of the
    paper's Table 4 (a multiply-add is 1 FLOP; matrix products only: linears, the patch
    convolution, attention's Q K^T and A V), as unet.flops. An MFU figure takes twice this per
    forward; a training step about 3 forwards plus each gradient-free forward of the loss."""
    cfg = model_or_config.config if isinstance(model_or_config, DiT) else model_or_config
    if isinstance(cfg, str):
        if cfg not in DIT_CONFIGS:
            raise ValueError(f"unknown DiT configuration {cfg!r}; choose from {list(DIT_CONFIGS)}")
        cfg = DIT_CONFIGS[cfg]
    cfg = {**{k: p.default for k, p in inspect.signature(DiT).parameters.items()}, **cfg}   # defaults for the rest
    D, L, p, C = cfg["hidden_size"], cfg["depth"], cfg["patch_size"], cfg["in_channels"]
    T, H = (cfg["input_size"] // p) ** 2, int(D * cfg["mlp_ratio"])
    embed = T * (C * p * p) * D + 2 * (256 * D + D * D)          # patch conv, two time MLPs
    block = (6 * D * D                                            # adaLN modulation (per image)
             + T * 4 * D * D                                      # qkv and output projections
             + 2 * T * T * D                                      # Q K^T and A V over all heads
             + T * 2 * D * H)                                     # MLP
    final = 2 * D * D + T * D * (p * p * C)
    return batch * (embed + L * block + final)
