"""
The CIFAR-10 U-Net: the DDPM++-style "SongUNet" of the EDM code base (Karras et al.,
"Elucidating the Design Space of Diffusion-Based Generative Models"), in the one
configuration the released SoFlow recipe uses, as a SoFlow network F(x, t, s).

    32x32 -> 16x16 -> 8x8, 256 channels at every resolution (128 x [2, 2, 2]),
    4 residual blocks per resolution, self-attention at 16x16, dropout 0.3,
    resampling with the [1, 3, 3, 1] filter, an unconditional network.

SoFlow's change is the time embedding (SPEC section 8): the 256-channel positional
embeddings of t and of t - s are concatenated, so the first layer of the mapping
network takes 512 inputs. An optional 6-dim augmentation label (the EDM-style
augmentation of the released recipe: x-flip, scaling, anisotropy, translation) is
mapped linearly and added to that embedding.

Module and parameter names are those of the EDM SongUNet, as in the released
checkpoint (SPEC section 9): map_noise, map_augment, map_layer0, map_layer1, and the
ModuleDicts enc['32x32_conv'], enc['RxR_blockI'], enc['RxR_down'], dec['8x8_in0'],
dec['8x8_in1'], dec['RxR_up'], dec['RxR_blockI'], dec['32x32_aux_norm'],
dec['32x32_aux_conv']. Load a released state dict with
dit.load_released_state_dict(unet, checkpoint['ema_model']).

    net = UNet()                                    # the released configuration, 55.93M parameters
    F = net(x, t, s, augment_labels=None)           # x (N, 3, 32, 32), t, s (N,)
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION_MODES = ("fused", "math")

# -----------------------------------------------------------------------------
# Layers. EDM initialises every weight xavier-uniform and every bias to zero, then
# scales some weights: 1e-5 for the last convolution of each residual branch (so each
# block starts close to the identity and the output close to zero) and sqrt(0.2) for
# the attention's q, k, v projection.

def _xavier(weight, scale=1.0):
    nn.init.xavier_uniform_(weight)
    with torch.no_grad():
        weight.mul_(scale)


class Linear(nn.Linear):
    def __init__(self, in_features, out_features, bias=True, init_weight=1.0):
        super().__init__(in_features, out_features, bias=bias)
        _xavier(self.weight, init_weight)
        if bias:
            nn.init.zeros_(self.bias)


class Conv2d(nn.Module):
    """A k x k convolution ('same' padding), optionally preceded by 2x down- or
    up-sampling with a fixed separable low-pass filter (the outer product of
    resample_filter with itself, normalised to sum 1; x4 for up-sampling, which spreads
    each pixel over a 2x larger grid). kernel=0 means resampling only. The filter is a
    buffer, in the state dict as in the released checkpoint."""

    def __init__(self, in_channels, out_channels, kernel, up=False, down=False,
                 resample_filter=(1, 3, 3, 1), init_weight=1.0):
        super().__init__()
        assert not (up and down)
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        self.weight = self.bias = None
        if kernel:
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
            self.bias = nn.Parameter(torch.zeros(out_channels))
            _xavier(self.weight, init_weight)
        if up or down:
            f = torch.as_tensor(resample_filter, dtype=torch.float32)
            self.register_buffer("resample_filter", (f.outer(f) / f.sum().square())[None, None])
        else:
            self.resample_filter = None

    def forward(self, x):
        if self.up or self.down:
            f = self.resample_filter.to(x.dtype)
            pad = (f.shape[-1] - 1) // 2
            if self.up:     # depthwise transposed convolution: zero-stuffing + filtering
                x = F.conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1),
                                       groups=self.in_channels, stride=2, padding=pad)
            else:           # depthwise filtering + stride 2
                x = F.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=pad)
        if self.weight is not None:
            w = self.weight.to(x.dtype)
            x = F.conv2d(x, w, self.bias.to(x.dtype), padding=w.shape[-1] // 2)
        return x


def group_norm(channels):
    """GroupNorm with 32 groups (fewer when there are fewer than 4 channels per group)."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class PositionalEmbedding(nn.Module):
    """The EDM positional embedding with endpoint=True, halves in the order [sin, cos]
    (EDM computes [cos, sin] and SongUNet swaps the halves). Frequencies
    (1/max_positions)^(i / (num_channels/2 - 1)), i = 0 .. num_channels/2 - 1, so the
    last one is exactly 1/max_positions. Raw times (N,) -> (N, num_channels). No parameters."""

    def __init__(self, num_channels, max_positions=10000):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions

    def forward(self, x):
        half = self.num_channels // 2
        dtype = torch.promote_types(x.dtype, torch.float32)    # never in half precision
        freqs = (1 / self.max_positions) ** (torch.arange(half, dtype=dtype, device=x.device) / (half - 1))
        args = x.to(dtype)[:, None] * freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

# -----------------------------------------------------------------------------
# The residual block: GroupNorm-SiLU-conv, add the embedding, GroupNorm-SiLU-dropout-
# conv, add the (projected) input, scale by sqrt(1/2); optionally single-head
# self-attention as a second residual step.

class UNetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False,
                 attention=False, dropout=0.0, resample_filter=(1, 3, 3, 1), attn="fused"):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dropout = dropout
        self.attention = attention
        self.attn_mode = attn
        self.norm0 = group_norm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels)
        self.norm1 = group_norm(out_channels)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init_weight=1e-5)
        self.skip = None
        if in_channels != out_channels or up or down:    # 1x1 projection of the shortcut
            self.skip = Conv2d(in_channels, out_channels, 1, up=up, down=down, resample_filter=resample_filter)
        if attention:
            self.norm2 = group_norm(out_channels)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1, init_weight=math.sqrt(0.2))
            self.proj = Conv2d(out_channels, out_channels, 1, init_weight=1e-5)

    def forward(self, x, emb):
        skip_scale = math.sqrt(0.5)
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None].to(x.dtype)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * skip_scale
        if self.attention:
            N, C, H, W = x.shape
            # one head; the 3C channels of qkv are interleaved as (channel, {q, k, v}),
            # the layout of the released weights
            q, k, v = self.qkv(self.norm2(x)).reshape(N, C, 3, H * W).unbind(2)
            q, k, v = (u.transpose(1, 2) for u in (q, k, v))            # (N, HW, C)
            if self.attn_mode == "fused":
                a = F.scaled_dot_product_attention(q, k, v)
            else:
                a = ((q @ k.transpose(1, 2)) / math.sqrt(C)).softmax(dim=-1) @ v
            x = (self.proj(a.transpose(1, 2).reshape(N, C, H, W)) + x) * skip_scale
        return x

# -----------------------------------------------------------------------------
# The U-Net.

class UNet(nn.Module):
    """F(x, t, s): x (N, C, R, R) images in [-1, 1], t and s (N,) times in [0, 1],
    augment_labels (N, augment_dim) or None (= no augmentation). Returns (N, C, R, R).
    The defaults are the released CIFAR-10 configuration; smaller values (fewer channels,
    blocks, resolutions) give tiny networks of the same design for tests."""

    def __init__(self, img_resolution=32, in_channels=3, model_channels=128, channel_mult=(2, 2, 2),
                 num_blocks=4, attn_resolutions=(16,), dropout=0.3, noise_channels=256,
                 emb_mult=4, augment_dim=6, resample_filter=(1, 3, 3, 1), attn="fused"):
        super().__init__()
        if attn not in ATTENTION_MODES:
            raise ValueError(f"attention mode {attn!r}: choose from {ATTENTION_MODES}")
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"resolution {img_resolution} cannot be halved {len(channel_mult) - 1} times")
        self.config = dict(img_resolution=img_resolution, in_channels=in_channels,
                           model_channels=model_channels, channel_mult=list(channel_mult),
                           num_blocks=num_blocks, attn_resolutions=list(attn_resolutions),
                           dropout=dropout, noise_channels=noise_channels, emb_mult=emb_mult,
                           augment_dim=augment_dim, resample_filter=list(resample_filter), attn=attn)
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, in_channels
        self.augment_dim = augment_dim
        emb_channels = model_channels * emb_mult
        block = dict(emb_channels=emb_channels, dropout=dropout, resample_filter=resample_filter, attn=attn)

        # Mapping network: [PE(t), PE(t - s)] (+ augmentation) -> Linear-SiLU-Linear-SiLU,
        # on the raw times in [0, 1] as the DiT's embedders. One parameter-free embedding
        # serves both times, so the concatenation has 2 x 256 = 512 channels and
        # map_layer0 takes 512 inputs: 55,932,419 parameters in all, SPEC's 55.93M
        # (256 inputs would give 55.80M). The augmentation label is added to that
        # 512-channel embedding, before map_layer0, as EDM adds it to the noise embedding.
        self.map_noise = PositionalEmbedding(noise_channels)
        self.map_augment = Linear(augment_dim, 2 * noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(2 * noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        # Encoder: a 3x3 convolution, then per resolution (after a down-sampling block
        # below the first) num_blocks residual blocks. Every output is kept for a skip.
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [m.out_channels for m in self.enc.values()]

        # Decoder: at the lowest resolution two blocks (the first with attention), above
        # it an up-sampling block; then num_blocks + 1 blocks per resolution, each taking
        # one skip; attention in the last block of an attention resolution. The output
        # head (GroupNorm-SiLU-conv) sits at the full resolution.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attention = i == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=attention, **block)
        self.dec[f"{img_resolution}x{img_resolution}_aux_norm"] = group_norm(cout)
        self.dec[f"{img_resolution}x{img_resolution}_aux_conv"] = Conv2d(cout, self.out_channels, 3, init_weight=1e-5)

    def forward(self, x, t, s, y=None, augment_labels=None):
        N = x.shape[0]
        if y is not None:
            raise ValueError("this U-Net is unconditional: call it with y=None (labels are not supported)")
        if tuple(x.shape[1:]) != (self.in_channels, self.img_resolution, self.img_resolution):
            raise ValueError(f"x has shape {tuple(x.shape)}; this U-Net takes "
                             f"(N, {self.in_channels}, {self.img_resolution}, {self.img_resolution})")
        if t.shape != (N,) or s.shape != (N,):
            raise ValueError(f"t and s must have shape ({N},), got {tuple(t.shape)} and {tuple(s.shape)}")

        # Mapping: the embedding of t and the embedding of the step t - s, side by side.
        emb = torch.cat([self.map_noise(t), self.map_noise(t - s)], dim=1).to(self.map_layer0.weight.dtype)
        if augment_labels is not None:
            if self.map_augment is None or augment_labels.shape != (N, self.augment_dim):
                raise ValueError(f"augment_labels must have shape ({N}, {self.augment_dim}), "
                                 f"got {tuple(augment_labels.shape)}")
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        out = None
        for name, block in self.dec.items():
            if name.endswith("aux_norm"):
                out = block(x)
            elif name.endswith("aux_conv"):
                out = block(F.silu(out))
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


def set_attention(model, mode):
    """Switch every attention layer of the U-Net to 'fused' (F.scaled_dot_product_attention)
    or 'math' (explicit softmax(Q K^T / sqrt(d)) V). Returns the model."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode {mode!r}: choose from {ATTENTION_MODES}")
    for m in model.modules():
        if isinstance(m, UNetBlock):
            m.attn_mode = mode
    if isinstance(getattr(model, "config", None), dict):
        model.config["attn"] = mode
    return model
