"""Tests of unet.py: the released configuration's parameter count (the authors' 55.93M)
and state-dict layout built by hand from the released checkpoint's naming rules, a
second, functional implementation of the whole network written from the EDM description
(resampling by its definition, GroupNorm by hand, attention in EDM's einsum form, skips
by EDM's channel rule, class labels by EDM's map_label), conditioning on t, s, class
labels and the augmentation label, tiny presets (8x8 and 28x28 grayscale), the
constructor's checks, the FLOP count against torch's counter, gradients, dropout,
attention paths, bf16 autocast, torch.compile, and soflow_loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from torch.utils.flop_counter import FlopCounterMode

import dit
import soflow
import unet

TINY = dict(img_resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1,
            attn_resolutions=(4,), noise_channels=16, dropout=0.0)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return unet.UNet(**{**TINY, **kw})


def randomize(model, seed=1):
    """Replace EDM's initialisation (1e-5-scaled last convolutions, zero biases, unit
    norms) by random values of unit gain everywhere, so that every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def inputs(n=3, res=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, res, res, generator=g)
    t = torch.rand(n, generator=g) * 0.9 + 0.1
    s = t * torch.rand(n, generator=g)
    aug = torch.randn(n, 6, generator=g)
    return x, t, s, aug

# ------------------------------------------------- the released configuration

def test_parameter_count_and_shape_of_the_released_unet():
    with torch.device("meta"):
        net = unet.UNet()
        out = net(torch.empty(2, 3, 32, 32), torch.empty(2), torch.empty(2), augment_labels=torch.empty(2, 6))
    assert out.shape == (2, 3, 32, 32)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n / 1e6 - 55.93) < 0.005, n                        # the released network: 55.93M
    assert n == 55_932_419
    assert net.config == dict(img_resolution=32, in_channels=3, model_channels=128, channel_mult=[2, 2, 2],
                              num_blocks=4, attn_resolutions=[16], dropout=0.3, noise_channels=256,
                              emb_mult=4, augment_dim=6, num_classes=0, resample_filter=[1, 3, 3, 1],
                              attn="fused")


def block_layout(name, cin, cout, emb, up_down=False, attention=False):
    e = {f"{name}.norm0.weight": (cin,), f"{name}.norm0.bias": (cin,),
         f"{name}.conv0.weight": (cout, cin, 3, 3), f"{name}.conv0.bias": (cout,),
         f"{name}.affine.weight": (cout, emb), f"{name}.affine.bias": (cout,),
         f"{name}.norm1.weight": (cout,), f"{name}.norm1.bias": (cout,),
         f"{name}.conv1.weight": (cout, cout, 3, 3), f"{name}.conv1.bias": (cout,)}
    if cin != cout or up_down:
        e.update({f"{name}.skip.weight": (cout, cin, 1, 1), f"{name}.skip.bias": (cout,)})
    if up_down:   # the fixed [1, 3, 3, 1] x [1, 3, 3, 1] filter is a buffer of both resampling convs
        e.update({f"{name}.conv0.resample_filter": (1, 1, 4, 4), f"{name}.skip.resample_filter": (1, 1, 4, 4)})
    if attention:
        e.update({f"{name}.norm2.weight": (cout,), f"{name}.norm2.bias": (cout,),
                  f"{name}.qkv.weight": (3 * cout, cout, 1, 1), f"{name}.qkv.bias": (3 * cout,),
                  f"{name}.proj.weight": (cout, cout, 1, 1), f"{name}.proj.bias": (cout,)})
    return e


def test_state_dict_layout_matches_the_released_checkpoint():
    """Written out by hand for 128 x [2, 2, 2], 4 blocks, attention at 16x16."""
    E = 512
    e = {"map_augment.weight": (512, 6), "map_layer0.weight": (E, 512), "map_layer0.bias": (E,),
         "map_layer1.weight": (E, E), "map_layer1.bias": (E,),
         "enc.32x32_conv.weight": (128, 3, 3, 3), "enc.32x32_conv.bias": (128,),
         "dec.32x32_aux_norm.weight": (256,), "dec.32x32_aux_norm.bias": (256,),
         "dec.32x32_aux_conv.weight": (3, 256, 3, 3), "dec.32x32_aux_conv.bias": (3,)}
    e.update(block_layout("enc.32x32_block0", 128, 256, E))
    for i in (1, 2, 3):
        e.update(block_layout(f"enc.32x32_block{i}", 256, 256, E))
    for res in (16, 8):
        e.update(block_layout(f"enc.{res}x{res}_down", 256, 256, E, up_down=True))
        for i in range(4):
            e.update(block_layout(f"enc.{res}x{res}_block{i}", 256, 256, E, attention=res == 16))
    e.update(block_layout("dec.8x8_in0", 256, 256, E, attention=True))
    e.update(block_layout("dec.8x8_in1", 256, 256, E))
    for res in (16, 32):
        e.update(block_layout(f"dec.{res}x{res}_up", 256, 256, E, up_down=True))
    for res in (8, 16, 32):
        for i in range(5):                         # each takes a skip: 256 + 256, the very last 256 + 128
            cin = 256 + (128 if (res, i) == (32, 4) else 256)
            e.update(block_layout(f"dec.{res}x{res}_block{i}", cin, 256, E, attention=(res, i) == (16, 4)))
    with torch.device("meta"):
        net = unet.UNet()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == e


def test_released_state_dict_loads_strictly_and_computes_the_same_function():
    source = randomize(tiny(seed=3))
    released = {"network." + k: v.clone() for k, v in source.state_dict().items()}
    target = tiny(seed=4)
    dit.load_released_state_dict(target, released)
    x, t, s, aug = inputs()
    assert torch.equal(target(x, t, s, augment_labels=aug), source(x, t, s, augment_labels=aug))
    released.pop("network.map_layer0.bias")
    with pytest.raises(RuntimeError, match="Missing key"):
        dit.load_released_state_dict(target, released)

# ------------------------------------------------- the function, independently

def ref_group_norm(x, sd, name):
    N, C = x.shape[:2]
    G = min(32, C // 4)
    g = x.reshape(N, G, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-6)
    return g.reshape(x.shape) * sd[name + ".weight"][:, None, None] + sd[name + ".bias"][:, None, None]


FILTER = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8       # separable: the 2-D filter is its outer product


def ref_down(x):
    """out[i, j] = sum_ab f[a] f[b] x[2i + a - 1, 2j + b - 1] (zero outside)."""
    H = x.shape[-1]
    xp = F.pad(x, (1, 1, 1, 1))
    rows = sum(FILTER[a] * xp[..., a:a + H:2, :] for a in range(4))
    return sum(FILTER[b] * rows[..., b:b + H:2] for b in range(4))


def ref_up(x):
    """Transposed convolution by its definition: every input pixel (i, j) adds
    x[i, j] * 4 f[a] f[b] to output pixel (2i + a - 1, 2j + b - 1)."""
    N, C, H, W = x.shape
    buf = x.new_zeros(N, C, 2 * H + 2, 2 * W + 2)
    for a in range(4):
        for b in range(4):
            buf[..., a:a + 2 * H:2, b:b + 2 * W:2] += 4 * FILTER[a] * FILTER[b] * x
    return buf[..., 1:1 + 2 * H, 1:1 + 2 * W]


def ref_conv(x, sd, name, resample=None):
    if resample is not None:
        x = resample(x)
    w = sd[name + ".weight"]
    return F.conv2d(x, w, sd[name + ".bias"], padding=w.shape[-1] // 2)


def ref_block(x, emb, sd, name, resample=None):
    orig = x
    x = ref_conv(F.silu(ref_group_norm(x, sd, name + ".norm0")), sd, name + ".conv0", resample)
    x = x + (emb @ sd[name + ".affine.weight"].T + sd[name + ".affine.bias"])[:, :, None, None]
    x = ref_conv(F.silu(ref_group_norm(x, sd, name + ".norm1")), sd, name + ".conv1")
    x = (x + (ref_conv(orig, sd, name + ".skip", resample) if name + ".skip.weight" in sd else orig)) / math.sqrt(2)
    if name + ".qkv.weight" in sd:                # EDM's single-head attention, channels (c, {q, k, v})
        N, C, H, W = x.shape
        qkv = ref_conv(ref_group_norm(x, sd, name + ".norm2"), sd, name + ".qkv").reshape(N, 3 * C, H * W)
        q, k, v = qkv[:, 0::3], qkv[:, 1::3], qkv[:, 2::3]
        w = torch.softmax(torch.einsum("ncq,nck->nqk", q, k / math.sqrt(C)), dim=2)
        a = torch.einsum("nqk,nck->ncq", w, v).reshape(N, C, H, W)
        x = (ref_conv(a, sd, name + ".proj") + x) / math.sqrt(2)
    return x


def ref_embedding(u, channels):
    half = channels // 2
    freqs = torch.tensor([10000.0 ** (-i / (half - 1)) for i in range(half)], dtype=u.dtype)
    return torch.cat([torch.sin(u[:, None] * freqs), torch.cos(u[:, None] * freqs)], 1)


def reference_forward(net, x, t, s, aug, y=None, num_classes=0):
    """SongUNet from its description; skips joined by EDM's rule (whenever x's channels
    differ from the block's input channels); class labels as EDM's map_label: a linear map
    of the one-hot vector times sqrt(num_classes), the null label (= num_classes) a zero vector."""
    sd = net.state_dict()
    emb = torch.cat([ref_embedding(t, 16), ref_embedding(t - s, 16)], 1) + aug @ sd["map_augment.weight"].T
    if num_classes:
        onehot = torch.zeros(len(y), num_classes, dtype=x.dtype)
        for i, label in enumerate(y.tolist()):
            if label < num_classes:
                onehot[i, label] = math.sqrt(num_classes)
        emb = emb + onehot @ sd["map_label.weight"].T + sd["map_label.bias"]
    emb = F.silu(emb @ sd["map_layer0.weight"].T + sd["map_layer0.bias"])
    emb = F.silu(emb @ sd["map_layer1.weight"].T + sd["map_layer1.bias"])
    skips = []
    for name, block in net.enc.items():
        if name.endswith("conv"):
            x = ref_conv(x, sd, f"enc.{name}")
        else:
            x = ref_block(x, emb, sd, f"enc.{name}", ref_down if name.endswith("down") else None)
        skips.append(x)
    for name, block in net.dec.items():
        if name.endswith("aux_norm"):
            x = ref_group_norm(x, sd, f"dec.{name}")
        elif name.endswith("aux_conv"):
            x = ref_conv(F.silu(x), sd, f"dec.{name}")
        else:
            if x.shape[1] != sd[f"dec.{name}.norm0.weight"].shape[0]:
                x = torch.cat([x, skips.pop()], 1)
            x = ref_block(x, emb, sd, f"dec.{name}", ref_up if name.endswith("up") else None)
    assert not skips
    return x


def test_forward_equals_an_independent_implementation():
    torch.set_default_dtype(torch.float64)
    try:
        net = randomize(tiny()).eval()
        x, t, s, aug = (u.double() for u in inputs())
        ref = reference_forward(net, x, t, s, aug)
        for mode in ("fused", "math"):
            unet.set_attention(net, mode)
            assert torch.allclose(net(x, t, s, augment_labels=aug), ref, atol=1e-10, rtol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def test_class_labels_equal_an_independent_implementation():
    """EDM's class conditioning: y in [0, num_classes), num_classes = the null label = None."""
    torch.set_default_dtype(torch.float64)
    try:
        net = randomize(tiny(num_classes=5)).eval()
        x, t, s, aug = (u.double() for u in inputs())
        y = torch.tensor([0, 4, 5])                                   # the last one: the null label
        for mode in ("fused", "math"):
            unet.set_attention(net, mode)
            ref = reference_forward(net, x, t, s, aug, y, num_classes=5)
            assert torch.allclose(net(x, t, s, y, augment_labels=aug), ref, atol=1e-10, rtol=1e-8)
        null = reference_forward(net, x, t, s, aug, torch.full((3,), 5), num_classes=5)
        assert torch.allclose(net(x, t, s, augment_labels=aug), null, atol=1e-10, rtol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def test_class_labels_condition_and_the_unconditional_layout_is_unchanged():
    net = randomize(tiny(num_classes=10)).eval()
    x, t, s, _ = inputs()
    y = torch.tensor([1, 2, 3])
    base = net(x, t, s, y)
    for other in (net(x, t, s, (y + 1) % 10), net(x, t, s, None)):
        assert (other - base).abs().flatten(1).amax(1).min() > 1e-3 * base.abs().max()
    assert torch.equal(net(x, t, s, None), net(x, t, s, torch.full((3,), 10)))
    keys = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.startswith("map_label")}
    assert keys == {"map_label.weight": (32, 10), "map_label.bias": (32,)}     # 2 x noise_channels outputs
    assert net.config["num_classes"] == 10 and net.num_classes == 10
    # num_classes=0 is the released layout: the same keys as before, and no map_label
    uncond = tiny()
    assert uncond.map_label is None and set(net.state_dict()) - set(uncond.state_dict()) == set(keys)
    with pytest.raises(RuntimeError, match="Unexpected key.*map_label"):
        uncond.load_state_dict(net.state_dict(), strict=True)
    with pytest.raises(ValueError, match="integer labels"):
        net(x, t, s, y.float())
    with pytest.raises(ValueError, match="integer labels"):
        net(x, t, s, y[:2])
    with pytest.raises(RuntimeError, match="[Cc]lass values"):         # 11 is neither a class nor the null label
        net(x, t, s, torch.tensor([0, 11, 1]))
    # a training step reaches map_label (labels given; also through the null label's bias)
    net.train()
    net(x, t, s, torch.tensor([1, 10, 3])).square().sum().backward()
    assert net.map_label.weight.grad[:, 1].abs().sum() > 0 and net.map_label.weight.grad[:, 10 - 1].abs().sum() == 0
    assert net.map_label.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("kw, shape", [
    (dict(img_resolution=8, in_channels=1, model_channels=16, channel_mult=(1, 2), num_blocks=1,
          attn_resolutions=(4,), num_classes=10, augment_dim=0), (1, 8, 8)),       # 8x8 digits
    (dict(img_resolution=28, in_channels=1, model_channels=8, channel_mult=(1, 2, 2), num_blocks=1,
          attn_resolutions=(7,), num_classes=10, augment_dim=0), (1, 28, 28)),     # MNIST: 28, 14, 7
    (dict(img_resolution=32, in_channels=1, model_channels=8, channel_mult=(1, 1, 2), num_blocks=1,
          attn_resolutions=(8,), num_classes=10, augment_dim=0), (1, 32, 32)),     # MNIST padded to 32
])
def test_tiny_grayscale_unets_without_a_preset(kw, shape):
    net = randomize(unet.UNet(**{**kw, "noise_channels": 16, "dropout": 0.0}))
    x = torch.randn(4, *shape)
    t = torch.rand(4)
    out = net(x, t, t / 2, torch.tensor([0, 5, 9, 10]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert unet.UNet(**net.config).config == net.config


@pytest.mark.parametrize("kw, match", [
    (dict(img_resolution=28, channel_mult=(1, 2, 2, 2)), r"img_resolution=28 .*channel_mult=\(1, 2, 2, 2\)"),
    (dict(img_resolution=8, attn_resolutions=(16,)), r"attn_resolutions=\(16,\).*\[8, 4\]"),
    (dict(dropout=-0.1), r"dropout=-0.1"), (dict(dropout=1.0), r"dropout=1.0"), (dict(dropout="0.1"), "dropout='0.1'"),
    (dict(num_blocks=0), "num_blocks=0"), (dict(model_channels=0), "model_channels=0"),
    (dict(img_resolution=0), "img_resolution=0"), (dict(in_channels=2.0), "in_channels=2.0"),
    (dict(emb_mult=0), "emb_mult=0"), (dict(num_classes=-1), "num_classes=-1"), (dict(augment_dim=-1), "augment_dim=-1"),
    (dict(num_classes=True), "num_classes=True"),
    (dict(channel_mult=()), r"channel_mult=\(\)"), (dict(channel_mult=(1, 0)), r"channel_mult=\(1, 0\)"),
    (dict(noise_channels=2), "noise_channels=2"), (dict(noise_channels=15), "noise_channels=15"),
    (dict(resample_filter=(1, 2, 1)), r"resample_filter=\(1, 2, 1\)"), (dict(resample_filter=(1, -1)), "resample_filter"),
    (dict(attn="flash"), "attn='flash'"),
])
def test_bad_constructor_values_are_refused_before_anything_is_built(kw, match, monkeypatch):
    def built(*args, **kwargs):
        raise AssertionError("a layer was built before the arguments were checked")
    monkeypatch.setattr(unet.UNetBlock, "__init__", built)
    monkeypatch.setattr(unet.Conv2d, "__init__", built)
    with pytest.raises(ValueError, match=match):
        unet.UNet(**{**TINY, **kw})


def test_channels_a_group_norm_cannot_split_are_refused():
    """36 channels x (1, 2): a decoder block takes 72 + 72 = 144 channels, not a multiple of 32."""
    with pytest.raises(ValueError, match="GroupNorm over 144 channels.*model_channels"):
        unet.UNet(**{**TINY, "model_channels": 36})
    unet.UNet(**{**TINY, "model_channels": 12})                       # 12, 24, 36, 48: all multiples of 4


@pytest.mark.parametrize("kw", [dict(), dict(num_classes=10), dict(img_resolution=28, channel_mult=(1, 2, 2),
                                                                   attn_resolutions=(14, 7), num_blocks=2)])
def test_flops_match_torch_flop_counter_on_a_small_network_with_math_attention(kw):
    """A real CPU forward pass with math attention (torch's counter misses the CPU's fused
    attention kernel), labels and augmentation labels given; the counter counts 2 per multiply-add."""
    net = unet.UNet(**{**TINY, **kw, "attn": "math"})
    r = net.img_resolution
    y = torch.tensor([1, 10]) if net.num_classes else None
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(2, 3, r, r), torch.rand(2), torch.zeros(2), y, augment_labels=torch.zeros(2, 6))
    assert counter.get_total_flops() == 2 * 2 * unet.flops(net)
    assert unet.flops(net.config) == unet.flops(net)


def test_flops_of_the_released_unet():
    """The counter on the meta device (shapes only) agrees for the released configuration."""
    with torch.device("meta"):
        net = unet.UNet(attn="math")
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, 3, 32, 32), torch.empty(1), torch.empty(1), augment_labels=torch.empty(1, 6))
    assert counter.get_total_flops() == 2 * unet.flops(net) == 2 * unet.flops(unet.UNet().config)
    assert unet.flops(net) == 21_195_656_192            # 21.2 G multiply-adds per image (README)


def test_resampling_filters_keep_constants_and_shapes():
    conv_down = unet.Conv2d(2, 2, 0, down=True)
    conv_up = unet.Conv2d(2, 2, 0, up=True)
    ones = torch.ones(1, 2, 8, 8)
    d, u = conv_down(ones), conv_up(ones)
    assert d.shape == (1, 2, 4, 4) and u.shape == (1, 2, 16, 16)
    assert torch.allclose(d[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))      # interior of a constant stays
    assert torch.allclose(u[..., 1:-1, 1:-1], torch.ones(1, 2, 14, 14))
    assert torch.allclose(conv_down.resample_filter.sum(), torch.tensor(1.0))


def test_positional_embedding_formula():
    t = torch.tensor([0.0, 0.25, 1.0])
    e = unet.positional_embedding(t, 256)
    assert e.shape == (3, 256)
    assert torch.allclose(e[:, 0], torch.sin(t)) and torch.allclose(e[:, 128], torch.cos(t))     # frequency 1
    assert torch.allclose(e[:, 127], torch.sin(t * 1e-4)) and torch.allclose(e[:, 255], torch.cos(t * 1e-4))

# ------------------------------------------------- initialisation and conditioning

def test_initialisation_is_edm():
    net = tiny()
    blk = net.enc["4x4_block0"]
    c = blk.conv0.weight
    bound = math.sqrt(6 / (c.shape[1] * 9 + c.shape[0] * 9))
    assert 0.9 * bound < c.abs().max() <= bound and not blk.conv0.bias.any()
    assert blk.conv1.weight.abs().max() <= 1e-5 * math.sqrt(6 / (2 * 16 * 9))
    assert blk.qkv.weight.abs().max() <= math.sqrt(0.2) * math.sqrt(6 / (16 + 48))
    assert net.dec["8x8_aux_conv"].weight.abs().max() < 1e-5
    x, t, s, aug = inputs()
    assert net(x, t, s).abs().max() < 1e-3                        # the output starts near zero


def test_output_reacts_to_t_s_and_augment_labels():
    net = randomize(tiny()).eval()
    x, _, _, aug = inputs()
    t, s = torch.tensor([0.9, 0.5, 0.7]), torch.tensor([0.1, 0.2, 0.0])
    base = net(x, t, s)
    for other in (net(x, t - 0.1, s), net(x, t, s + 0.1), net(x, t, s, augment_labels=aug)):
        assert (other - base).abs().flatten(1).amax(1).min() > 1e-3 * base.abs().max()
    assert torch.equal(net(x, t, s, augment_labels=torch.zeros(3, 6)), base)   # zero label = none
    with pytest.raises(ValueError, match="unconditional"):
        net(x, t, s, y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="augment_labels"):
        net(x, t, s, augment_labels=torch.zeros(3, 9))
    with pytest.raises(ValueError, match="shape"):
        net(x[..., :4, :4], t, s)
    with pytest.raises(ValueError, match="t and s"):
        net(x, t[:1], s)


def test_gradients_reach_every_parameter():
    net = randomize(tiny())
    x, t, s, aug = inputs()
    net(x, t, s, augment_labels=aug).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dropout_is_active_in_training_and_replays_with_the_rng_state():
    net = randomize(tiny(dropout=0.3))
    x, t, s, _ = inputs()
    with torch.random.fork_rng():
        a = net(x, t, s)
    b = net(x, t, s)
    assert torch.equal(a, b)                                         # same RNG state, same masks
    assert not torch.allclose(net(x, t, s), b)                       # new masks
    net.eval()
    assert torch.equal(net(x, t, s), net(x, t, s))

# ------------------------------------------------- attention paths, precision, compile

def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_fused_and_math_attention_agree():
    net = randomize(tiny()).eval()
    x, t, s, aug = inputs()
    fused = net(x, t, s, augment_labels=aug)
    unet.set_attention(net, "math")
    assert net.config["attn"] == "math"
    assert _rel(net(x, t, s, augment_labels=aug), fused) < 1e-5
    with pytest.raises(ValueError, match="attention mode"):
        unet.set_attention(net, "flash")


def test_bf16_autocast_and_compiled_graph_track_eager_fp32():
    """bf16 autocast: relative L2 error of F and of the whole gradient below 3% (bf16 rounds
    to 2^-9 relative; GroupNorm and softmax run in fp32 under autocast); per parameter
    tensor below 15%, since the error grows along the blocks that backpropagation crosses
    to reach the first layers (8% at most in a network of 20 blocks). torch.compile with
    fullgraph=True (an error on any graph break) traces forward and backward into one graph
    each; the 'aot_eager' backend runs those graphs without generating kernels (inductor's
    C++ code generation takes most of a minute on a small CPU; test_dit covers inductor).
    With class labels (the one-hot map traces into the graph as well)."""
    net = randomize(tiny(num_classes=5))
    net.eval()                                   # no dropout: the three runs must be comparable
    x, t, s, aug = inputs()
    y = torch.tensor([0, 5, 3])
    params = list(net.parameters())

    def run(fn, autocast=False):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fn(x, t, s, y, augment_labels=aug)
        out.float().square().mean().backward()
        return out, [p.grad.clone() for p in params]

    out, grads = run(net)
    out16, grads16 = run(net, autocast=True)
    assert out16.dtype == torch.bfloat16 and _rel(out16, out) < 0.03
    assert _rel(torch.cat([g.flatten() for g in grads16]), torch.cat([g.flatten() for g in grads])) < 0.03
    assert all(_rel(g16, g) < 0.15 for g16, g in zip(grads16, grads))
    outc, gradsc = run(torch.compile(net, fullgraph=True, backend="aot_eager"))
    assert _rel(outc, out) < 1e-5 and all(_rel(gc, g) < 1e-5 for gc, g in zip(gradsc, grads))

# ------------------------------------------------- with the method

def test_soflow_loss_backward_step_with_a_tiny_unet():
    net = tiny(dropout=0.3)
    cfg = soflow.preset("cifar10", total_steps=100)
    x0 = inputs(n=8)[0]
    loss, logs = soflow.soflow_loss(net, cfg, x0, step=0, generator=torch.Generator().manual_seed(123))
    loss.backward()
    assert torch.isfinite(loss) and {"fm_mse", "scm_mse"} <= set(logs)
    for name, p in net.named_parameters():     # all but map_augment: no augmentation labels here
        assert (p.grad is None) == (name == "map_augment.weight"), name
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert net.dec["8x8_aux_conv"].weight.grad.abs().sum() > 0
