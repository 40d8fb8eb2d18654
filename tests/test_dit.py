"""Tests of dit.py: parameter counts and FLOPs against the paper's Table 4 and the
released networks' counts, the checkpoint layout (with and without the null label's row)
built by hand from the naming rules of the released checkpoints, a second, functional
implementation of the forward pass written from the description, the 2-D sin-cos
positions against an independent formula, conditioning, the constructor's checks,
gradients, attention paths, bf16 autocast, torch.compile, and soflow_loss / jvp."""

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import dit
import soflow

PAPER = {  # Table 4: parameters (M), GFLOPs; the released networks' counts (M), measured on their files
    "B/4": (131, 5.6, 131.21), "B/2": (131, 23.1, 131.29), "M/2": (308, 54.0, 308.28),
    "L/2": (459, 119.0, 459.40), "XL/2": (676, 119.0, 676.74),
}
# Table 4 lists 119.0 GFLOPs for L/2, the same as XL/2: a typo in the paper. L/2 has
# depth 24 at width 1024 (vs 28 at 1152), i.e. 80.7 GFLOPs, the DiT paper's figure for
# DiT-L/2 (same convention). That figure is the one checked.
GFLOPS = {"B/4": 5.6, "B/2": 23.1, "M/2": 54.0, "L/2": 80.7, "XL/2": 119.0}

TINY = dict(input_size=8, num_classes=10, depth=2, hidden_size=64, num_heads=4)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return dit.dit_from_name("T/2", **{**TINY, **kw})


def randomize_zero_layers(model, std=0.05, seed=1):
    """adaLN-Zero starts with zero modulations and a zero output layer, which makes F = 0
    and many gradients exactly zero; give those layers random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def inputs(n=3, size=8, seed=0, num_classes=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, size, size, generator=g)
    t = torch.rand(n, generator=g) * 0.9 + 0.1
    s = t * torch.rand(n, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, t, s, y

# ------------------------------------------------- sizes: Table 4 and released counts

@pytest.mark.parametrize("name", list(PAPER))
def test_parameter_count_flops_and_shape_of_the_paper_configurations(name):
    params_m, _, released_m = PAPER[name]
    with torch.device("meta"):
        model = dit.dit_from_name(name)
        x, t, y = torch.empty(2, 4, 32, 32), torch.empty(2), torch.zeros(2, dtype=torch.long)
    n = sum(p.numel() for p in model.parameters()) / 1e6        # frozen pos_embed included
    assert abs(n - params_m) / params_m < 0.01
    assert abs(n - released_m) < 0.005, f"{n:.4f}M vs released {released_m}M"
    assert not model.pos_embed.requires_grad

    g = dit.flops(name) / 1e9
    assert abs(g - GFLOPS[name]) / GFLOPS[name] < 0.05, f"{g:.2f} GFLOPs vs {GFLOPS[name]}"
    assert dit.flops(model) == dit.flops(model.config) == dit.flops(name)
    assert dit.flops(name, batch=7) == 7 * dit.flops(name)

    # independent count: torch's FLOP counter on a forward pass (it counts 2 per multiply-add)
    for mode in ("fused", "math"):
        dit.set_attention(model, mode)
        with FlopCounterMode(display=False) as counter:
            out = model(x, t, t, y)
        assert out.shape == (2, 4, 32, 32)
        assert counter.get_total_flops() == 2 * dit.flops(model, batch=2)


@pytest.mark.parametrize("name", ["T/4", "T/2"])
def test_tiny_configurations_shapes_and_flops(name):
    with torch.device("meta"):
        model = dit.dit_from_name(name)
        out = model(torch.empty(5, 4, 32, 32), torch.empty(5), torch.empty(5))
    assert out.shape == (5, 4, 32, 32)
    with FlopCounterMode(display=False) as counter:
        with torch.device("meta"):
            model(torch.empty(1, 4, 32, 32), torch.empty(1), torch.empty(1))
    assert counter.get_total_flops() == 2 * dit.flops(name)
    defaults = {k: p.default for k, p in inspect.signature(dit.DiT).parameters.items()}
    assert model.config == {**defaults, **dit.DIT_CONFIGS[name]}     # every constructor argument
    rebuilt = dit.DiT(**{**model.config, "attn": "math"})
    assert rebuilt.config["attn"] == "math"


def test_flops_match_torch_flop_counter_on_a_small_network_with_math_attention():
    """A real forward pass on the CPU (not the meta device), math attention, both label tables."""
    for null_label in (True, False):
        model = dit.DiT(**{**TINY, "patch_size": 2, "attn": "math", "null_label": null_label})
        x, t, s, y = inputs()
        with FlopCounterMode(display=False) as counter:
            model(x, t, s, y)
        assert counter.get_total_flops() == 2 * dit.flops(model, batch=3) == 2 * 3 * dit.flops(model.config)
    # a partial config: the constructor's defaults fill in the rest (4 latent channels, MLP ratio 4, ...)
    partial = dict(input_size=8, depth=2, hidden_size=64, num_heads=4)
    assert dit.flops(partial) == dit.flops(dit.DiT(**partial))

# ------------------------------------------------- checkpoint layout (the released files)

def expected_layout(D, depth, p, C, K, T, null_rows=1):
    """name -> shape from the released checkpoints' naming rules, written out by hand."""
    e = {"x_embedder.proj.weight": (D, C, p, p), "x_embedder.proj.bias": (D,),
         "pos_embed": (1, T, D), "y_embedder.embedding_table.weight": (K + null_rows, D),
         "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,),
         "final_layer.linear.weight": (p * p * C, D), "final_layer.linear.bias": (p * p * C,)}
    for emb in ("t_embedder", "s_embedder"):
        e.update({f"{emb}.mlp.0.weight": (D, 256), f"{emb}.mlp.0.bias": (D,),
                  f"{emb}.mlp.2.weight": (D, D), f"{emb}.mlp.2.bias": (D,)})
    for i in range(depth):
        b = f"blocks.{i}."
        e.update({b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
                  b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                  b + "mlp.fc1.weight": (4 * D, D), b + "mlp.fc1.bias": (4 * D,),
                  b + "mlp.fc2.weight": (D, 4 * D), b + "mlp.fc2.bias": (D,),
                  b + "adaLN_modulation.1.weight": (6 * D, D), b + "adaLN_modulation.1.bias": (6 * D,)})
    return e


def test_state_dict_layout_matches_the_released_checkpoints():
    with torch.device("meta"):
        model = dit.dit_from_name("XL/2")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_layout(D=1152, depth=28, p=2, C=4, K=1000, T=256)
    got = {k: tuple(v.shape) for k, v in tiny().state_dict().items()}
    assert got == expected_layout(D=64, depth=2, p=2, C=4, K=10, T=16)
    # trained without label dropout (the authors' table has num_classes + (dropout > 0) rows)
    got = {k: tuple(v.shape) for k, v in tiny(null_label=False).state_dict().items()}
    assert got == expected_layout(D=64, depth=2, p=2, C=4, K=10, T=16, null_rows=0)


def test_released_state_dict_loads_strictly_and_computes_the_same_function():
    source = randomize_zero_layers(tiny(seed=3))
    released = {"network." + k: v.clone() for k, v in source.state_dict().items()}  # the wrapper's keys
    target = tiny(seed=4)
    dit.load_released_state_dict(target, released)
    x, t, s, y = inputs()
    assert torch.equal(target(x, t, s, y), source(x, t, s, y))
    assert set(dit.strip_prefix(released)) == set(source.state_dict())
    bad = dict(released)
    bad["network.final_layer.linear.bias"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        dit.load_released_state_dict(target, bad)
    missing = {k: v for k, v in released.items() if "s_embedder" not in k}
    with pytest.raises(RuntimeError, match="Missing key"):
        dit.load_released_state_dict(target, missing)


def test_a_table_without_the_null_row_loads_strictly_and_needs_labels():
    """A configuration trained without label dropout: num_classes rows, no null label."""
    source = randomize_zero_layers(tiny(seed=3, null_label=False))
    released = {"network." + k: v.clone() for k, v in source.state_dict().items()}
    assert released["network.y_embedder.embedding_table.weight"].shape == (10, 64)
    target = tiny(seed=4, null_label=False)
    dit.load_released_state_dict(target, released)
    x, t, s, y = inputs()
    assert torch.equal(target(x, t, s, y), source(x, t, s, y))
    with pytest.raises(RuntimeError, match="size mismatch"):          # the default table has 11 rows
        dit.load_released_state_dict(tiny(), released)
    with pytest.raises(ValueError, match="null_label=False"):
        target(x, t, s, None)
    # the same weights with a null row appended compute the same for every real label
    with_null = tiny(seed=5)
    sd = target.state_dict()
    sd["y_embedder.embedding_table.weight"] = torch.cat([sd["y_embedder.embedding_table.weight"],
                                                        torch.randn(1, 64)])
    with_null.load_state_dict(sd, strict=True)
    assert torch.equal(with_null(x, t, s, y), target(x, t, s, y))
    assert target.config["null_label"] is False and dit.DiT(**target.config).y_embedder.embedding_table.num_embeddings == 10

# ------------------------------------------------- the function, independently

def reference_forward(sd, D, heads, p, x, t, s, y):
    """DiT written out from its description (the DiT paper, the authors' dit.py) with different
    operations: patches by unfold, layer norm and tanh-GELU by hand, heads by a loop."""
    N, C, H, _ = x.shape
    g = H // p
    patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(N, g * g, C * p * p)
    h = patches @ sd["x_embedder.proj.weight"].reshape(D, -1).T + sd["x_embedder.proj.bias"] + sd["pos_embed"]

    def lin(u, name):
        return u @ sd[name + ".weight"].T + sd[name + ".bias"]

    def time_mlp(u, emb):
        freqs = torch.tensor([10000 ** (-i / 128) for i in range(128)], dtype=u.dtype)
        feats = torch.cat([torch.cos(u[:, None] * freqs), torch.sin(u[:, None] * freqs)], 1)
        return lin(F.silu(lin(feats, f"{emb}.mlp.0")), f"{emb}.mlp.2")

    def norm(u):
        mu = u.mean(-1, keepdim=True)
        return (u - mu) / torch.sqrt(((u - mu) ** 2).mean(-1, keepdim=True) + 1e-6)

    def gelu_tanh(u):
        return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))

    c = time_mlp(t, "t_embedder") + time_mlp(t - s, "s_embedder") + sd["y_embedder.embedding_table.weight"][y]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    hd = D // heads
    for i in range(depth):
        b = f"blocks.{i}."
        mod = lin(F.silu(c), b + "adaLN_modulation.1")[:, None]
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (mod[..., j * D:(j + 1) * D] for j in range(6))
        qkv = lin(norm(h) * (1 + scale_a) + shift_a, b + "attn.qkv")
        heads_out = []
        for j in range(heads):
            q, k, v = (qkv[..., part * D + j * hd: part * D + (j + 1) * hd] for part in range(3))
            heads_out.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), -1) @ v)
        h = h + gate_a * lin(torch.cat(heads_out, -1), b + "attn.proj")
        m = lin(gelu_tanh(lin(norm(h) * (1 + scale_m) + shift_m, b + "mlp.fc1")), b + "mlp.fc2")
        h = h + gate_m * m
    mod = lin(F.silu(c), "final_layer.adaLN_modulation.1")[:, None]
    out = lin(norm(h) * (1 + mod[..., D:]) + mod[..., :D], "final_layer.linear")    # (N, T, p*p*C)
    # token (i, j) holds its patch as (row a, column b, channel c): pixel (i p + a, j p + b)
    return out.reshape(N, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, H, H)


@pytest.mark.parametrize("p", [2, 4])
def test_forward_equals_an_independent_implementation(p):
    torch.set_default_dtype(torch.float64)
    try:
        model = randomize_zero_layers(tiny(patch_size=p), std=0.1)
        x, t, s, y = (u.double() if u.is_floating_point() else u for u in inputs())
        y[0] = 10                                                    # the null label
        sd = model.state_dict()
        ref = reference_forward(sd, 64, 4, p, x, t, s, y)
        for mode in ("fused", "math"):
            dit.set_attention(model, mode)
            assert torch.allclose(model(x, t, s, y), ref, atol=1e-10, rtol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def test_pos_embed_is_the_2d_sincos_of_mae():
    """The MAE formulation, in numpy: grid = meshgrid(w, h) ('xy'); the first half of the
    channels embeds grid[0], the second grid[1], each as [sin, cos] of pos * omega."""
    D, gs = 64, 4
    gw, gh = np.meshgrid(np.arange(gs, dtype=np.float64), np.arange(gs, dtype=np.float64))
    omega = 1.0 / 10000 ** (np.arange(D // 4) / (D / 4.0))

    def one(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    expected = np.concatenate([one(gw), one(gh)], axis=1)
    model = tiny(input_size=2 * gs)
    assert np.allclose(model.pos_embed[0].numpy(), expected, atol=1e-6)
    assert "pos_embed" in model.state_dict() and not model.pos_embed.requires_grad


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 0.3, 1.0])
    e = dit.timestep_embedding(t)
    assert e.shape == (3, 256)
    for i in (0, 1, 77, 127):
        w = math.exp(-math.log(10000) * i / 128)
        assert torch.allclose(e[:, i], torch.cos(t * w)) and torch.allclose(e[:, 128 + i], torch.sin(t * w))

# ------------------------------------------------- initialisation and conditioning

def test_initialisation_is_dit_and_the_output_is_zero():
    model = dit.dit_from_name("T/2")        # 32x32 latents, 1000 classes
    x, t, s, y = inputs(size=32, num_classes=1000)
    assert torch.equal(model(x, t, s, y), torch.zeros_like(x))
    for blk in model.blocks:
        assert not blk.adaLN_modulation[1].weight.any() and not blk.adaLN_modulation[1].bias.any()
        bound = math.sqrt(6 / (128 + 3 * 128))                      # xavier-uniform of qkv
        w = blk.attn.qkv.weight
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound and not blk.attn.qkv.bias.any()
    assert abs(model.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.002
    assert abs(model.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.002
    # the (t - s)-MLP keeps xavier-uniform, as in the authors' dit.py
    bound = math.sqrt(6 / (256 + 128))
    w = model.s_embedder.mlp[0].weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound and not model.s_embedder.mlp[0].bias.any()
    assert model.y_embedder.embedding_table.weight.shape[0] == 1001           # the null row by default


def test_output_reacts_to_t_s_and_y_and_none_is_the_null_label():
    model = randomize_zero_layers(tiny(), std=0.1)
    x, _, _, y = inputs()
    t, s = torch.tensor([0.9, 0.5, 0.7]), torch.tensor([0.1, 0.2, 0.0])
    base = model(x, t, s, y)
    for other in (model(x, t - 0.1, s, y), model(x, t, s + 0.1, y), model(x, t, s, (y + 1) % 10),
                  model(x, t, s, None)):
        change = (other - base).abs().flatten(1).amax(1)
        # every sample changes (time features of the raw t in [0, 1] vary slowly: small but clear)
        assert change.min() > 1e-4 * base.abs().max()
    null = torch.full_like(y, 10)
    assert torch.equal(model(x, t, s, None), model(x, t, s, null))
    # s enters only through t - s: the same gap gives the same s-embedding
    assert torch.allclose(model.s_embedder(t - s), model.s_embedder((t + 0.1) - (s + 0.1)), atol=1e-5)


def test_gradients_reach_every_trainable_parameter():
    model = randomize_zero_layers(tiny())
    x, t, s, y = inputs()
    model(x, t, s, y).square().sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert name == "pos_embed" and p.grad is None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.parameters()) - model.pos_embed.numel()


def test_bad_inputs_are_rejected():
    model = tiny()
    x, t, s, y = inputs()
    with pytest.raises(ValueError, match="shape"):
        model(x[:, :3], t, s, y)
    with pytest.raises(ValueError, match="t and s"):
        model(x, t[:2], s, y)
    with pytest.raises(ValueError, match="integer labels"):
        model(x, t, s, y.float())
    with pytest.raises(ValueError, match="unknown DiT"):
        dit.dit_from_name("H/2")
    with pytest.raises(ValueError, match="unknown DiT"):
        dit.flops("H/2")
    with pytest.raises(ValueError, match="attention mode"):
        dit.set_attention(model, "flash")
    with pytest.raises(ValueError, match="patch_size=4 does not divide input_size=30"):
        dit.DiT(input_size=30, patch_size=4)


@pytest.mark.parametrize("kw, match", [
    (dict(depth=0), "depth=0"), (dict(num_heads=0), "num_heads=0"), (dict(depth=2.0), "depth=2.0"),
    (dict(hidden_size=60, num_heads=8), "hidden_size=60.*num_heads=8"), (dict(hidden_size=6, num_heads=3), "hidden_size=6"),
    (dict(patch_size=3), "patch_size=3 does not divide input_size=8"), (dict(patch_size=0), "patch_size=0"),
    (dict(input_size=-8), "input_size=-8"), (dict(in_channels=0), "in_channels=0"), (dict(num_classes=0), "num_classes=0"),
    (dict(mlp_ratio=-1.0), "mlp_ratio=-1.0"), (dict(mlp_ratio=float("nan")), "mlp_ratio=nan"),
    (dict(mlp_ratio="4"), "mlp_ratio='4'"), (dict(null_label="no"), "null_label='no'"), (dict(attn="flash"), "attn='flash'"),
])
def test_bad_constructor_values_are_refused_before_anything_is_built(kw, match, monkeypatch):
    def built(*args, **kwargs):
        raise AssertionError("a layer was built before the arguments were checked")
    monkeypatch.setattr(dit.TimestepEmbedder, "__init__", built)
    monkeypatch.setattr(dit.DiTBlock, "__init__", built)
    with pytest.raises(ValueError, match=match):
        dit.DiT(**{**TINY, **kw})

# ------------------------------------------------- attention paths, precision, compile

def test_fused_and_math_attention_agree():
    model = randomize_zero_layers(tiny(), std=0.1)
    x, t, s, y = inputs()
    fused = model(x, t, s, y)
    dit.set_attention(model, "math")
    assert model.config["attn"] == "math"
    assert torch.allclose(model(x, t, s, y), fused, atol=1e-5, rtol=1e-4)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_bf16_autocast_forward_and_backward_track_fp32():
    """Stated tolerance: bf16 has an 8-bit mantissa (relative rounding 2^-9 ~ 0.2%); through
    a two-block DiT the relative L2 error of F and of the gradients stays below 3%."""
    model = randomize_zero_layers(tiny(), std=0.1)
    x, t, s, y = inputs()
    out = model(x, t, s, y)
    out.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model(x, t, s, y)
    assert out16.dtype == torch.bfloat16
    out16.float().square().mean().backward()
    assert _rel(out16, out) < 0.03
    for g, p in zip(grads, (p for p in model.parameters() if p.requires_grad)):
        assert _rel(p.grad, g) < 0.03


def test_torch_compile_fullgraph_matches_eager():
    """Inductor, fullgraph=True (fails on any graph break), forward and backward.
    Tolerance 1e-4 relative: the same fp32 arithmetic, reordered by fusion."""
    model = randomize_zero_layers(tiny(depth=1, hidden_size=32, num_heads=2), std=0.1)
    x, t, s, y = inputs()
    eager = model(x, t, s, y)
    eager.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x, t, s, y)
    out.square().mean().backward()
    assert _rel(out, eager) < 1e-4
    for g, p in zip(grads, (p for p in model.parameters() if p.requires_grad)):
        assert _rel(p.grad, g) < 1e-4

# ------------------------------------------------- with the method

def test_soflow_loss_backward_step_with_a_tiny_dit():
    model = tiny()
    cfg = soflow.preset("imagenet", num_classes=10, total_steps=100)
    x0, _, _, y = inputs(n=8)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss, logs = soflow.soflow_loss(model, cfg, x0, y, step=0, generator=torch.Generator().manual_seed(123))
    loss.backward()
    assert torch.isfinite(loss) and {"fm_mse", "scm_mse"} <= set(logs)
    assert model.final_layer.linear.weight.grad.abs().sum() > 0     # the zero output layer learns first
    opt.step()
    assert model.final_layer.linear.weight.any()
    assert torch.equal(model.pos_embed, tiny().pos_embed)           # frozen


def test_jvp_through_math_attention_matches_finite_differences():
    torch.set_default_dtype(torch.float64)
    try:
        model = randomize_zero_layers(tiny(), std=0.1)
        dit.set_attention(model, "math")
        x, t, s, y = (u.double() if u.is_floating_point() else u for u in inputs())
        vx, vt = torch.randn_like(x), torch.ones_like(t)
        _, tangent = torch.func.jvp(lambda x_, t_: model(x_, t_, s, y), (x, t), (vx, vt))
        h = 1e-6
        fd = (model(x + h * vx, t + h * vt, s, y) - model(x - h * vx, t - h * vt, s, y)) / (2 * h)
        assert torch.allclose(tangent, fd, atol=1e-7, rtol=1e-6)
    finally:
        torch.set_default_dtype(torch.float32)
