"""Tests of baselines.py (flow matching, MeanFlow, Direct Models, Flow Generator Matching)
and of toy2d.py --method / --compare, against independent computations: central finite
differences of the MeanFlow total derivative, Direct Models' Eq. 13 in the paper's own
time convention, FGM's gradient against the closed form of a Gaussian case, and hand
computations of the losses."""

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import baselines
import soflow
import toy2d


class SmoothNet(nn.Module):
    """A small smooth network F(x, t, s, y) on flat vectors, with a label table."""

    def __init__(self, dim=2, num_classes=3, width=32):
        super().__init__()
        self.inp = nn.Linear(dim + 2, width)
        self.emb = nn.Embedding(num_classes + 1, width)
        self.out = nn.Linear(width, dim)
        self.null = num_classes

    def forward(self, x, t, s, y=None):
        if y is None:
            y = torch.full((x.shape[0],), self.null, device=x.device)
        h = torch.tanh(self.inp(torch.cat([x, t[:, None], s[:, None]], 1)) + self.emb(y))
        return self.out(h)


def grads(net):
    return [p.grad for p in net.parameters()]


def has_grad(net):
    return all(g is not None and g.abs().sum() > 0 for g in grads(net))


def no_grad(net):
    return all(g is None for g in grads(net))

# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("make", [
    lambda: baselines.FlowMatchingConfig(schedule="cosine"),
    lambda: baselines.FlowMatchingConfig(time_sigma=0.0),
    lambda: baselines.FlowMatchingConfig(label_drop=1.0),
    lambda: baselines.MeanFlowConfig(ratio=1.5),
    lambda: baselines.MeanFlowConfig(eps=0.0),
    lambda: baselines.MeanFlowConfig(p=-1.0),
    lambda: baselines.MeanFlowConfig(kappa=1.0, num_classes=10),
    lambda: baselines.MeanFlowConfig(omega=0.2, kappa=0.5, num_classes=10),     # effective scale 0.4 < 1
    lambda: baselines.MeanFlowConfig(omega=2.0),                                 # guidance without labels
    lambda: baselines.MeanFlowConfig(guidance_t_min=0.8, guidance_t_max=0.5),
    lambda: baselines.DirectConfig(delta=0.0),
    lambda: baselines.DirectConfig(delta=0.6),
    lambda: baselines.DirectConfig(cfg_scale=1.5),                               # guidance without labels
    lambda: baselines.FGMConfig(l1_weight=-1.0),
    lambda: baselines.FGMConfig(num_classes=0),
    lambda: baselines.FlowMatchingConfig(time_mu=float("nan")),                  # not finite
    lambda: baselines.MeanFlowConfig(eps=float("inf")),
    lambda: baselines.DirectConfig(cfg_scale=float("inf"), num_classes=10),
])
def test_bad_config_is_rejected(make):
    with pytest.raises(ValueError, match="Config"):       # one line naming the config and the field
        make()


def test_unknown_method_and_labels_without_classes():
    with pytest.raises(ValueError, match="unknown method"):
        baselines.build("shortcut", SmoothNet, 10, 1e-3)
    with pytest.raises(ValueError, match="unconditional"):
        baselines.flow_matching_loss(SmoothNet(), baselines.FlowMatchingConfig(), torch.randn(4, 2), y=torch.zeros(4, dtype=torch.long))


def test_meanflow_guidance_is_soflow_mix_reparameterized():
    """[MF] Eq. 21 (omega v + kappa v_c + (1 - omega - kappa) v_u) by hand equals the SoFlow
    mix of the config's .soflow() view (w = omega / (1 - kappa), m = 1 - kappa, no decay)."""
    cfg = baselines.MeanFlowConfig(num_classes=5, omega=1.2, kappa=0.6)
    g = torch.Generator().manual_seed(0)
    v, vu, vc = (torch.randn(16, 3, generator=g) for _ in range(3))
    t = torch.rand(16, generator=g)
    t[0] = 0.999                                               # where SoFlow would decay
    mixed = soflow.mix_velocity(cfg.soflow(), t, v, vu, vc)
    hand = 1.2 * v + 0.6 * vc + (1 - 1.2 - 0.6) * vu
    torch.testing.assert_close(mixed, hand, atol=1e-6, rtol=1e-6)

# ---------------------------------------------------------------- flow matching

def test_flow_matching_loss_by_hand_and_gradients():
    cfg = baselines.FlowMatchingConfig(time_mu=0.3, time_sigma=1.2, num_classes=3, label_drop=0.5)
    net = SmoothNet()
    x0, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    loss, logs = baselines.flow_matching_loss(net, cfg, x0, y, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)                   # the same draws, in the same order
    x1 = torch.randn(x0.shape, generator=g)
    t = torch.sigmoid(0.3 + 1.2 * torch.randn(32, generator=g))
    keep = torch.rand(32, generator=g) >= 0.5
    y_in = torch.where(keep, y, torch.full_like(y, 3))
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    hand = (net(x_t, t, t, y_in) - (x1 - x0)).square().mean()
    torch.testing.assert_close(loss, hand)
    assert set(logs) == {"loss", "fm_mse"}
    loss.backward()
    assert has_grad(net) and torch.isfinite(loss)

# ---------------------------------------------------------------- MeanFlow

def test_meanflow_jvp_equals_central_differences():
    """du/dt = v d_z u + d_t u ([MF] Eq. 8) from torch.func.jvp equals the central difference
    of u(z + h v, r, t + h) in h, in float64."""
    torch.manual_seed(0)
    net = SmoothNet(dim=3).double()
    z, v = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) * 0.8 + 0.2
    r = t * torch.rand(8, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    u, dudt = baselines.meanflow_jvp(net, z, t, r, v, y)
    h = 1e-5
    fd = (net(z + h * v[:], t + h, r, y) - net(z - h * v, t - h, r, y)) / (2 * h)
    torch.testing.assert_close(dudt, fd, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(u, net(z, t, r, y))
    # and the primal keeps its graph: the loss backpropagates through u
    u.sum().backward()
    assert has_grad(net)


def test_meanflow_times():
    cfg = baselines.MeanFlowConfig(ratio=0.25)
    t, r = baselines.meanflow_times(cfg, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.all(r <= t) and torch.all((t > 0) & (t < 1))
    assert (r < t).sum() == 250 and torch.all(r[:750] == t[:750])


@pytest.mark.parametrize("guided", [False, True])
def test_meanflow_loss_by_hand(guided):
    """The loss equals a hand computation: the draws replayed from the same generator, the
    total derivative by torch.autograd.functional.jvp (a second implementation), the target
    of [MF] Eq. 10 (with the velocity of Eq. 21 when guided), the adaptive weight."""
    kw = dict(num_classes=3, label_drop=0.3, omega=1.5, kappa=0.4, guidance_t_min=0.1, guidance_t_max=0.9) if guided \
        else dict(num_classes=3, label_drop=0.3)
    cfg = baselines.MeanFlowConfig(time_mu=0.0, time_sigma=1.0, ratio=0.5, p=0.75, eps=0.05, **kw)
    torch.manual_seed(1)
    net = SmoothNet().double()
    x0, y = torch.randn(64, 2, dtype=torch.float64), torch.randint(0, 3, (64,))
    loss, logs = baselines.meanflow_loss(net, cfg, x0, y, generator=torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    a = torch.sigmoid(torch.randn(64, generator=g)).double()
    b = torch.sigmoid(torch.randn(64, generator=g)).double()
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    r = torch.where(torch.arange(64) < 32, t, r)
    keep = torch.rand(64, generator=g) >= 0.3
    y_in = torch.where(keep, y, torch.full_like(y, 3))
    z = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = x1 - x0
    if guided:
        with torch.no_grad():
            vu, vc = net(z, t, t, torch.full_like(y, 3)), net(z, t, t, y_in)
        on = (keep & (t >= 0.1) & (t <= 0.9))[:, None]
        v = torch.where(on, 1.5 * v + 0.4 * vc + (1 - 1.5 - 0.4) * vu, v)
    fn = lambda z_, t_: net(z_, t_, r, y_in)
    _, dudt = torch.autograd.functional.jvp(fn, (z, t), (v, torch.ones_like(t)))
    target = v - (t - r)[:, None] * dudt
    err = (net(z, t, r, y_in) - target).square().sum(1)
    hand = (err / (err.detach() + 0.05) ** 0.75).mean()
    torch.testing.assert_close(loss, hand, atol=1e-10, rtol=1e-8)
    assert logs["r_neq_t"] == 0.5
    loss.backward()
    assert has_grad(net) and torch.isfinite(loss)


def test_meanflow_samplers_are_the_average_velocity_jumps():
    torch.manual_seed(0)
    net, cfg = SmoothNet(), baselines.MeanFlowConfig()
    x1 = torch.randn(16, 2)
    one, zero, half = torch.ones(16), torch.zeros(16), torch.full((16,), 0.5)
    torch.testing.assert_close(baselines.meanflow_sample(net, cfg, x1), x1 - net(x1, one, zero))
    z = x1 - 0.5 * net(x1, one, half)                        # z_r = z_t - (t - r) u(z_t, r, t)
    torch.testing.assert_close(baselines.meanflow_sample(net, cfg, x1, steps=2), z - 0.5 * net(z, half, zero))

# ---------------------------------------------------------------- Direct Models

def test_direct_target_is_eq13_in_the_papers_time():
    """Eq. 13 of [DM] computed by hand in the paper's convention (noise x0 at t' = 0,
    phi(x0, t') = x0 + t' w(x0, t'), v_DM = d phi / dt'), with w and v_DM read off our
    networks: w(x, t') = -F(x, 1, 1 - t'), v_DM(x, t') = -F_v(x, 1 - t', 1 - t')."""
    torch.manual_seed(0)
    wnet, vnet = SmoothNet(), SmoothNet()
    cfg = baselines.DirectConfig(delta=0.02)
    x_noise = torch.randn(16, 2)
    tp = torch.rand(16) * 0.9 + 0.05                          # the paper's t'
    one = torch.ones(16)
    w = lambda x, s: -wnet(x, one, 1 - s)
    v_dm = lambda x, s: -vnet(x, 1 - s, 1 - s)
    d = 0.02
    x_t = x_noise + tp[:, None] * w(x_noise, tp)
    hand = (tp - d)[:, None] / tp[:, None] * w(x_noise, tp) + d / tp[:, None] * v_dm(x_t, tp)   # w(x0, t' + d)
    ours = baselines.direct_target(wnet, vnet, cfg, x_noise, 1 - tp)
    torch.testing.assert_close(-ours, hand, atol=1e-6, rtol=1e-5)
    # the prediction it is compared with is w(x0, t' + d), and the sampler is x0 + w(x0, 1) (Eq. 17)
    torch.testing.assert_close(-wnet(x_noise, one, (1 - tp) - d), w(x_noise, tp + d))
    torch.testing.assert_close(baselines.direct_sample(wnet, cfg, x_noise), x_noise + w(x_noise, one))


def test_direct_losses_touch_their_own_network():
    torch.manual_seed(0)
    wnet, vnet = SmoothNet(), SmoothNet()
    cfg = baselines.DirectConfig(num_classes=3, label_drop=0.1, cfg_scale=1.5)
    x0, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    loss_w, _ = baselines.direct_prop_loss(wnet, vnet, cfg, torch.randn(32, 2), y)
    loss_w.backward()
    assert has_grad(wnet) and no_grad(vnet)                   # sg on w and v in the target
    wnet.zero_grad(set_to_none=True)
    loss_v, _ = baselines.flow_matching_loss(vnet, cfg.fm(), x0, y)
    loss_v.backward()
    assert has_grad(vnet) and no_grad(wnet)
    vnet.zero_grad(set_to_none=True)
    loss, logs = baselines.direct_loss(wnet, vnet, cfg, x0, y)
    loss.backward()
    assert torch.isfinite(loss) and has_grad(wnet) and has_grad(vnet)
    assert set(logs) == {"loss", "cfm_mse", "prop_mse"}

# ---------------------------------------------------------------- Flow Generator Matching

class Teacher(nn.Module):
    """The exact velocity of 1-D data N(m, s^2) under x_t = (1 - t) x0 + t x1."""

    def __init__(self, m, s):
        super().__init__()
        self.m, self.s2 = m, s * s

    def forward(self, x, t, s, y=None):
        return gaussian_velocity(self.m, self.s2, x, t[:, None])


def gaussian_velocity(m, s2, x, t):
    """E[x1 - x0 | x_t = x] for x0 ~ N(m, s2): linear in x."""
    return -m + (t - (1 - t) * s2) / ((1 - t) ** 2 * s2 + t ** 2) * (x - (1 - t) * m)


class Generator(nn.Module):
    """g(z) = a z + b, written as the flow network F(z, 1, 1) = z - g(z)."""

    def __init__(self, a, b):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x, t, s, y=None):
        return (1 - self.a) * x - self.b


class Online(nn.Module):
    """The exact flow of the generator's distribution N(b, a^2) at the current (a, b), held
    fixed: v_psi = v_{sg[theta]}."""

    def __init__(self, gen):
        super().__init__()
        self.a, self.b = gen.a.item(), gen.b.item()

    def forward(self, x, t, s, y=None):
        return gaussian_velocity(self.b, self.a ** 2, x, t[:, None])


@pytest.mark.parametrize("t_value", [0.25, 0.7])
def test_fgm_gradient_matches_closed_form(t_value):
    """Gaussian data N(m, s^2), linear generator g(z) = a z + b, exact teacher and online
    flows. Expectations over (z, x1) by Gauss-Hermite quadrature (exact: the integrands are
    polynomials). Then, at fixed t:
      grad(L1 + L2) = grad of E_{x ~ p_theta,t} |v_theta(x) - u(x)|^2  ([FGM] Eq. 4.1, 4.3),
      grad L2       = Grad_2 = E[-2 (u - v_theta)^T d/dtheta v_theta]    ([FGM] Eq. 4.5, Thm 4.2),
    the right-hand sides by autograd of the closed forms."""
    m, s, a0, b0, t = 0.7, 0.5, 1.3, -0.4, t_value
    gen, teacher = Generator(a0, b0), Teacher(m, s)
    online = Online(gen)
    cfg = baselines.FGMConfig()
    nodes, weights = np.polynomial.hermite_e.hermegauss(6)
    weights = weights / math.sqrt(2 * math.pi)
    z, x1 = (torch.tensor(u, dtype=torch.float64).reshape(-1, 1) for u in np.meshgrid(nodes, nodes))
    wq = torch.tensor(np.outer(weights, weights).reshape(-1), dtype=torch.float64)
    tt = torch.full((z.shape[0],), t, dtype=torch.float64)

    def fgm_grads(l1_weight):
        gen.zero_grad(set_to_none=True)
        l1, l2 = baselines.fgm_terms(gen, online, teacher, cfg, z, x1, tt)
        (wq * (l1_weight * l1 + l2)).sum().backward()
        return torch.stack([gen.a.grad, gen.b.grad])

    def closed_form(detach_distribution):
        a, b = torch.tensor(a0, dtype=torch.float64, requires_grad=True), torch.tensor(b0, dtype=torch.float64, requires_grad=True)
        mu, var = (1 - t) * b, (1 - t) ** 2 * a ** 2 + t ** 2
        if detach_distribution:
            mu, var = mu.detach(), var.detach()
        # v_theta(x) - u(x) = c1 x + c0, both velocities linear in x
        k_v = (t - (1 - t) * a ** 2) / ((1 - t) ** 2 * a ** 2 + t ** 2)
        k_u = (t - (1 - t) * s * s) / ((1 - t) ** 2 * s * s + t ** 2)
        c1 = k_v - k_u
        c0 = (-b - k_v * (1 - t) * b) - (-m - k_u * (1 - t) * m)
        value = c1 ** 2 * (var + mu ** 2) + 2 * c1 * c0 * mu + c0 ** 2
        return torch.stack(torch.autograd.grad(value, (a, b)))

    torch.testing.assert_close(fgm_grads(1.0), closed_form(False), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(fgm_grads(0.0), closed_form(True), atol=1e-10, rtol=1e-9)
    assert closed_form(False).abs().min() > 1e-3                # a case where the gradients are not trivial


def test_fgm_alternation_gradients():
    """Step (a) trains the online model only, step (b) the generator only; the teacher never."""
    torch.manual_seed(0)
    teacher, online, gen = SmoothNet(), SmoothNet(), SmoothNet()    # online != teacher, else L1 = L2 = 0
    cfg = baselines.FGMConfig(l1_weight=1.0, num_classes=3)
    z, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    loss, logs = baselines.fgm_online_loss(online, gen, cfg, z, y)
    loss.backward()
    assert has_grad(online) and no_grad(gen) and no_grad(teacher)
    online.zero_grad(set_to_none=True)
    loss, logs = baselines.fgm_generator_loss(gen, online, teacher, cfg, z, y)
    loss.backward()
    assert torch.isfinite(loss) and has_grad(gen) and no_grad(online) and no_grad(teacher)
    assert all(p.requires_grad for p in online.parameters())          # frozen only during the step
    assert set(logs) == {"loss", "fgm_l1", "fgm_l2"}
    torch.testing.assert_close(baselines.fgm_sample(gen, cfg, z, y), z - gen(z, torch.ones(32), torch.ones(32), y))

# ---------------------------------------------------------------- training on the toy

def _held_out_loss(name, method, batch):
    """The method's loss on a fixed batch with fixed noise and times."""
    g = torch.Generator().manual_seed(0)
    nets, cfg = method.nets, method.config
    if name == "fm":
        return baselines.flow_matching_loss(nets["v"], cfg, batch, generator=g)[0].item()
    if name == "meanflow":
        return baselines.meanflow_loss(nets["u"], cfg, batch, generator=g)[0].item()
    return baselines.direct_loss(nets["w"], nets["v"], cfg, batch, generator=g)[0].item()


@pytest.mark.parametrize("name,cfg", [
    ("fm", baselines.FlowMatchingConfig()),
    ("meanflow", baselines.MeanFlowConfig(p=0.0)),    # p = 0: the plain squared error of [MF] Eq. 9
    ("direct", baselines.DirectConfig()),
])
def test_each_loss_decreases_on_the_toy(name, cfg):
    """300 steps of a small MLP on the Gaussian mixture: the loss on a held-out batch (fixed
    noise and times) goes down, and every logged figure stays finite."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mixture = toy2d.default_mixture()
    method = baselines.build(name, lambda: toy2d.MLP(width=64, depth=3), 300, 3e-3, cfg)
    held_out = torch.from_numpy(toy2d.sample_data("gmm", 4096, np.random.default_rng(5), mixture))
    before = _held_out_loss(name, method, held_out)
    logs = [method.step(torch.from_numpy(toy2d.sample_data("gmm", 256, rng, mixture)), k) for k in range(300)]
    after = _held_out_loss(name, method, held_out)
    assert all(math.isfinite(v) for row in logs for v in row.values())
    assert after < 0.97 * before, (before, after)


def test_fgm_runs_on_the_toy():
    """The toy schedule: the teacher's flow matching loss decreases over its half of the
    steps, then the generator and online model train with finite losses."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mixture = toy2d.default_mixture()
    method = baselines.build("fgm", lambda: toy2d.MLP(width=64, depth=3), 300, 3e-3)
    logs = [method.step(torch.from_numpy(toy2d.sample_data("gmm", 256, rng, mixture)), k) for k in range(300)]
    assert np.mean([r["fm_mse"] for r in logs[120:150]]) < 0.9 * np.mean([r["fm_mse"] for r in logs[:30]])
    assert all("fgm_l2" in r and math.isfinite(r["loss"]) for r in logs[150:])
    assert set(method.nets) == {"teacher", "online", "generator"}
    assert all(not p.requires_grad for p in method.nets["teacher"].parameters())


@pytest.mark.parametrize("l1_weight", [0.0, 1.0])
def test_fgm_training_decreases_the_flow_objective(l1_weight):
    """Gaussian data N(m, s^2), a linear generator g(z) = a z + b, the exact teacher, and the
    online model kept at the generator's exact flow: Adam on the FGM loss (with L2 alone, as
    the paper trains, and with L1 + L2) drives the intractable objective of [FGM] Eq. 4.1,
    E_t E_{p_theta,t} |v_theta - u|^2 in closed form, down by orders of magnitude, and the
    generator to the data distribution."""
    m, s = 0.7, 0.5
    torch.manual_seed(0)
    gen, teacher = Generator(1.3, -0.4), Teacher(m, s)
    cfg = baselines.FGMConfig(l1_weight=l1_weight)
    opt = torch.optim.Adam(gen.parameters(), lr=0.02)
    ts = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)

    def objective():
        a, b = gen.a.detach(), gen.b.detach()
        total = 0.0
        for t in ts:
            k_v = (t - (1 - t) * a ** 2) / ((1 - t) ** 2 * a ** 2 + t ** 2)
            k_u = (t - (1 - t) * s * s) / ((1 - t) ** 2 * s * s + t ** 2)
            mu, var = (1 - t) * b, (1 - t) ** 2 * a ** 2 + t ** 2
            c1, c0 = k_v - k_u, (-b - k_v * (1 - t) * b) - (-m - k_u * (1 - t) * m)
            total += float(c1 ** 2 * (var + mu ** 2) + 2 * c1 * c0 * mu + c0 ** 2)
        return total / len(ts)

    before = objective()
    for _ in range(400):
        online = Online(gen)                                   # the online model tracks the generator
        z = torch.randn(512, 1, dtype=torch.float64)
        loss, _ = baselines.fgm_generator_loss(gen, online, teacher, cfg, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert objective() < 1e-2 * before, (before, objective())
    assert abs(abs(gen.a.item()) - s) < 0.05 and abs(gen.b.item() - m) < 0.05


def test_toy2d_method_and_compare_end_to_end(tmp_path):
    common = ["--steps", "4", "--batch", "64", "--width", "32", "--depth", "2", "--eval_points", "150", "--threads", "1"]
    for name in ("meanflow", "direct", "fgm", "fm"):
        out = tmp_path / name
        rows = toy2d.main(common + ["--method", name, "--out", str(out)])
        assert [r["method"] for r in rows] == [name]
        assert (out / f"toy2d_{name}.png").stat().st_size > 10_000
        result = json.loads((out / f"results_{name}.json").read_text())
        assert math.isfinite(result["rows"][0]["runs"][0]["nfe"]["1"]["endpoint_rmse"])
    out = tmp_path / "compare"
    rows = toy2d.main(common + ["--compare", "--seeds", "0,1", "--out", str(out)])
    assert [r["method"] for r in rows] == list(baselines.METHODS)
    result = json.loads((out / "compare.json").read_text())
    assert [r["method"] for r in result["rows"]] == list(baselines.METHODS)
    assert "MeanFlow" in result["table"] and "exact ODE map" in result["table"] and " +- " in result["table"]
    soflow_row, direct_row = result["rows"][0], result["rows"][2]
    assert set(soflow_row["mean_sd"]) == {"1", "2"} and set(direct_row["mean_sd"]) == {"1"}
    # per seed, and the mean and spread over the seeds
    assert [u["seed"] for u in soflow_row["runs"]] == [0, 1]
    e = [u["nfe"]["1"]["endpoint_rmse"] for u in soflow_row["runs"]]
    assert e[0] != e[1] and soflow_row["mean_sd"]["1"]["endpoint_rmse"] == pytest.approx([np.mean(e), np.std(e)])
    assert all(math.isfinite(u["nfe"]["1"]["energy_distance"]) for r in result["rows"] for u in r["runs"])
    assert (out / "compare.png").stat().st_size > 10_000
