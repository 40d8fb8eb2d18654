"""
The CIFAR-10 U-Net as a SoFlow network F(x, t, s, y): the DDPM++-style SongUNet of the EDM
code base (Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
Models"). The defaults are the released configuration (the authors' models.py): 32x32 ->
16x16 -> 8x8 at 128 x [2, 2, 2] channels, 4 blocks per resolution, attention at 16x16,
dropout 0.3, [1, 3, 3, 1] resampling, unconditional; 55,932,419 parameters.

SoFlow's change (the authors' unet.py): the 256-channel positional embeddings of t and of
t - s are concatenated, so map_layer0 takes 512 inputs. Added to that embedding as EDM adds
them to its noise embedding: the released recipe's 6-dim augmentation label, mapped
linearly, and with num_classes > 0 the class label, a Linear on its one-hot vector times
sqrt(num_classes). The null label (y = num_classes; y=None for all) is the zero vector:
exactly EDM's label dropout. Names are EDM's, as in the released checkpoint (map_augment,
map_layer0, enc['32x32_conv'], enc['16x16_down'], dec['8x8_in0'], dec['16x16_block4'], ...):
load one with dit.load_released_state_dict(unet, checkpoint['ema_model']).

    net = UNet()                                  # the released configuration
    F = net(x, t, s, augment_labels=None)         # x (N, 3, 32, 32), t, s (N,)
    digits = UNet(img_resolution=8, in_channels=1, model_channels=32, channel_mult=(1, 2),
                  attn_resolutions=(4,), num_classes=10)        # F = digits(x, t, s, y)
    flops(net)                                    # multiply-adds per image, for MFU figures
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION_MODES = ("fused", "math")

# -----------------------------------------------------------------------------
# Layers, initialised as EDM's: xavier-uniform weights, zero biases; scaled by 1e-5 in the last
# convolution of each residual branch (blocks start near the identity), sqrt(0.2) in q, k, v.

def _init(layer, scale=1.0):
    nn.init.xavier_uniform_(layer.weight, gain=scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer

class Conv2d(nn.Module):
    """A k x k 'same' convolution (kernel=0: none), after optional 2x down- or up-sampling by a
    fixed low-pass filter: resample_filter's outer product with itself, summing to 1 (x4 when
    up-sampling spreads each pixel over 4). The filter is a buffer, as in the released file."""
    def __init__(self, in_channels, out_channels, kernel, up=False, down=False,
                 resample_filter=(1, 3, 3, 1), init_weight=1.0):
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        self.weight = self.bias = None
        if kernel:
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
            self.bias = nn.Parameter(torch.empty(out_channels))
            _init(self, init_weight)
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        self.register_buffer("resample_filter", (f.outer(f) / f.sum().square())[None, None] if up or down else None)

    def forward(self, x):
        if self.up or self.down:   # depthwise: transposed (zero-stuffing + filtering) or strided filtering
            f = self.resample_filter.to(x.dtype).tile(self.in_channels, 1, 1, 1)
            resample, f = (F.conv_transpose2d, 4 * f) if self.up else (F.conv2d, f)
            x = resample(x, f, groups=self.in_channels, stride=2, padding=(f.shape[-1] - 1) // 2)
        if self.weight is not None:
            w = self.weight.to(x.dtype)
            x = F.conv2d(x, w, self.bias.to(x.dtype), padding=w.shape[-1] // 2)
        return x

def group_norm(channels):
    """GroupNorm with 32 groups, fewer when that leaves under 4 channels a group (EDM's)."""
    groups = min(32, channels // 4)
    if groups < 1 or channels % groups:
        raise ValueError(f"GroupNorm over {channels} channels: need a multiple of 4 (of 32 from 128): change model_channels")
    return nn.GroupNorm(groups, channels, eps=1e-6)

def positional_embedding(x, num_channels, max_positions=10000):
    """EDM's positional embedding, endpoint=True, halves [sin, cos] (the authors' unet.py swaps
    EDM's): frequencies (1/max_positions)^(i / (num_channels/2 - 1)), i < num_channels/2."""
    half, dtype = num_channels // 2, torch.promote_types(x.dtype, torch.float32)   # never in half precision
    freqs = (1 / max_positions) ** (torch.arange(half, dtype=dtype, device=x.device) / (half - 1))
    args = x.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

# -----------------------------------------------------------------------------
# The residual block: GroupNorm-SiLU-conv, + embedding, GroupNorm-SiLU-dropout-conv, + the
# (projected) input, x sqrt(1/2); then optionally single-head self-attention, a residual too.

class UNetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False,
                 attention=False, dropout=0.0, resample_filter=(1, 3, 3, 1), attn="fused"):
        super().__init__()
        self.out_channels, self.attention, self.dropout, self.attn_mode = out_channels, attention, dropout, attn
        self.norm0 = group_norm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = _init(nn.Linear(emb_channels, out_channels))
        self.norm1 = group_norm(out_channels)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init_weight=1e-5)
        self.skip = (Conv2d(in_channels, out_channels, 1, up=up, down=down, resample_filter=resample_filter)
                     if in_channels != out_channels or up or down else None)    # 1x1 projection of the shortcut
        if attention:
            self.norm2 = group_norm(out_channels)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1, init_weight=math.sqrt(0.2))
            self.proj = Conv2d(out_channels, out_channels, 1, init_weight=1e-5)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None].to(x.dtype)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * math.sqrt(0.5)
        if self.attention:
            N, C, H, W = x.shape
            # the 3C channels of qkv are interleaved as (channel, {q, k, v}), as released
            q, k, v = (u.transpose(1, 2) for u in self.qkv(self.norm2(x)).reshape(N, C, 3, H * W).unbind(2))
            a = (F.scaled_dot_product_attention(q, k, v) if self.attn_mode == "fused"
                 else ((q @ k.transpose(1, 2)) / math.sqrt(C)).softmax(dim=-1) @ v)
            x = (self.proj(a.transpose(1, 2).reshape(N, C, H, W)) + x) * math.sqrt(0.5)
        return x

# -----------------------------------------------------------------------------
# The U-Net.

class UNet(nn.Module):
    """F(x, t, s, y): x (N, C, R, R) in [-1, 1], t and s (N,) in [0, 1], y (N,) int64 labels in
    [0, num_classes] (num_classes: the null label) or None (null for all; only None if num_classes=0),
    augment_labels (N, augment_dim) or None. R must halve at each level of channel_mult (28: 28, 14, 7)."""
    def __init__(self, img_resolution=32, in_channels=3, model_channels=128, channel_mult=(2, 2, 2),
                 num_blocks=4, attn_resolutions=(16,), dropout=0.3, noise_channels=256,
                 emb_mult=4, augment_dim=6, num_classes=0, resample_filter=(1, 3, 3, 1), attn="fused"):
        super().__init__()
        for low, ints in ((1, dict(img_resolution=img_resolution, in_channels=in_channels, num_blocks=num_blocks,
                                   model_channels=model_channels, noise_channels=noise_channels, emb_mult=emb_mult)),
                          (0, dict(augment_dim=augment_dim, num_classes=num_classes))):
            for name, v in ints.items():
                if isinstance(v, bool) or not isinstance(v, int) or v < low:
                    raise ValueError(f"{name}={v!r}: must be an integer >= {low}")
        if not (channel_mult and all(isinstance(m, int) and m >= 1 for m in channel_mult)):
            raise ValueError(f"channel_mult={channel_mult!r}: must be one or more positive integers")
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"img_resolution={img_resolution} cannot be halved at each of the {len(channel_mult)} "
                             f"levels of channel_mult={tuple(channel_mult)}: use fewer levels or pad the images")
        resolutions = [img_resolution >> level for level in range(len(channel_mult))]
        if not set(attn_resolutions) <= set(resolutions):
            raise ValueError(f"attn_resolutions={tuple(attn_resolutions)}: this U-Net's resolutions are {resolutions}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout={dropout!r}: must be in [0, 1)")
        if noise_channels < 4 or noise_channels % 2:
            raise ValueError(f"noise_channels={noise_channels}: must be even and at least 4")
        if len(resample_filter) % 2 or not sum(resample_filter):
            raise ValueError(f"resample_filter={tuple(resample_filter)}: needs an even number of taps, sum not 0")
        if attn not in ATTENTION_MODES:
            raise ValueError(f"attn={attn!r}: choose from {ATTENTION_MODES}")
        self.config = dict(img_resolution=img_resolution, in_channels=in_channels, model_channels=model_channels,
                           channel_mult=list(channel_mult), num_blocks=num_blocks, attn_resolutions=list(attn_resolutions),
                           dropout=dropout, noise_channels=noise_channels, emb_mult=emb_mult, augment_dim=augment_dim,
                           num_classes=num_classes, resample_filter=list(resample_filter), attn=attn)
        self.img_resolution, self.in_channels, self.augment_dim = img_resolution, in_channels, augment_dim
        self.num_classes, self.noise_channels = num_classes, noise_channels
        emb_channels = model_channels * emb_mult
        block = dict(emb_channels=emb_channels, dropout=dropout, resample_filter=resample_filter, attn=attn)

        # Mapping: [PE(t), PE(t - s)] (+ label, + augmentation) -> Linear-SiLU-Linear-SiLU, on raw
        # times in [0, 1]. map_layer0 takes 2 x 256 inputs: the released 55.93M (256 give 55.80M).
        self.map_label = _init(nn.Linear(num_classes, 2 * noise_channels)) if num_classes else None
        self.map_augment = _init(nn.Linear(augment_dim, 2 * noise_channels, bias=False)) if augment_dim else None
        self.map_layer0 = _init(nn.Linear(2 * noise_channels, emb_channels))
        self.map_layer1 = _init(nn.Linear(emb_channels, emb_channels))

        # Encoder: a 3x3 convolution, then per resolution (after a down-sampling block below the
        # first) num_blocks residual blocks. Every output is kept for a skip.
        self.enc = nn.ModuleDict({f"{img_resolution}x{img_resolution}_conv": Conv2d(in_channels, model_channels, 3)})
        cout = model_channels
        for level, (res, mult) in enumerate(zip(resolutions, channel_mult)):
            if level > 0:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [m.out_channels for m in self.enc.values()]

        # Decoder: at the lowest resolution two blocks (the first attends), above it an up-sampling
        # block; then num_blocks + 1 blocks per resolution, each taking a skip, the last attending
        # at attention resolutions. The output head (GroupNorm-SiLU-conv) at the full resolution.
        self.dec = nn.ModuleDict()
        for level, (res, mult) in reversed(list(enumerate(zip(resolutions, channel_mult)))):
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                last = i == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=last, **block)
        self.dec[f"{img_resolution}x{img_resolution}_aux_norm"] = group_norm(cout)
        self.dec[f"{img_resolution}x{img_resolution}_aux_conv"] = Conv2d(cout, in_channels, 3, init_weight=1e-5)

    def forward(self, x, t, s, y=None, augment_labels=None):
        N = x.shape[0]
        if tuple(x.shape[1:]) != (self.in_channels, self.img_resolution, self.img_resolution):
            raise ValueError(f"x has shape {tuple(x.shape)}; this U-Net takes "
                             f"(N, {self.in_channels}, {self.img_resolution}, {self.img_resolution})")
        if t.shape != (N,) or s.shape != (N,):
            raise ValueError(f"t and s must have shape ({N},), got {tuple(t.shape)} and {tuple(s.shape)}")
        # Mapping: the embedding of t and the embedding of the step t - s, side by side.
        emb = torch.cat([positional_embedding(u, self.noise_channels) for u in (t, t - s)], 1).to(self.map_layer0.weight.dtype)
        if self.map_label is not None:
            y = torch.full((N,), self.num_classes, dtype=torch.long, device=x.device) if y is None else y
            if y.shape != (N,) or y.is_floating_point():
                raise ValueError(f"y must be integer labels of shape ({N},), got {y.dtype} {tuple(y.shape)}")
            onehot = y[:, None] == torch.arange(self.num_classes, device=y.device)   # null label: 0s; F.one_hot syncs
            torch._assert_async(((y >= 0) & (y <= self.num_classes)).all(), f"class values must be in [0, {self.num_classes}]")
            emb = emb + self.map_label(onehot.to(emb.dtype) * math.sqrt(self.num_classes))
        elif y is not None:
            raise ValueError("this U-Net is unconditional (num_classes=0): call it with y=None")
        if augment_labels is not None:
            if self.map_augment is None or augment_labels.shape != (N, self.augment_dim):
                raise ValueError(f"augment_labels must have shape ({N}, {self.augment_dim}), got {tuple(augment_labels.shape)}")
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for name, block in self.dec.items():
            if "_block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            if name.endswith("aux_conv"):
                x = F.silu(x)
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
        return x

def set_attention(model, mode):
    """Every attention layer to 'fused' or 'math', as dit.set_attention. Returns the model."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode {mode!r}: choose from {ATTENTION_MODES}")
    for m in model.modules():
        if isinstance(m, UNetBlock):
            m.attn_mode = mode
    if isinstance(model, UNet):
        model.config["attn"] = mode
    return model

def flops(model_or_config):
    """Multiply-adds of one forward pass per image of a UNet or its .config, with labels and
    augmentation labels where it takes them, counted analytically in dit.flops' convention:
    linears, convolutions (resampling filters included), attention's Q K^T and A V."""
    with torch.device("meta"):                          # shapes only
        net = model_or_config if isinstance(model_or_config, UNet) else UNet(**model_or_config)
    total = sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))
    for name, block in (*net.enc.items(), *net.dec.items()):
        r = int(name.split("x")[0])                     # the block's output resolution
        for m in block.modules():
            if isinstance(m, Conv2d) and m.weight is not None:
                total += m.weight.numel() * r * r
            if isinstance(m, Conv2d) and (m.up or m.down):     # depthwise; up: per input pixel
                total += m.in_channels * m.resample_filter.numel() * (r // 2 if m.up else r) ** 2
            if isinstance(m, UNetBlock) and m.attention:
                total += 2 * (r * r) ** 2 * m.out_channels
    return total
