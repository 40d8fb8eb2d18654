"""Tests of soflow.py against independent computations: autograd derivatives,
hand-computed losses, a second per-sample implementation of Algorithm 1, and the
exact solution map of a Gaussian mixture."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import soflow
import toy2d

torch.set_default_dtype(torch.float32)
COMBOS = [(sch, par) for sch in soflow.SCHEDULE_NAMES for par in soflow.PARAM_NAMES]


class SmoothNet(nn.Module):
    """A small smooth network F(x, t, s, y) on 2-D points, with a label table."""

    def __init__(self, dim=2, num_classes=3, width=32, dropout=0.0):
        super().__init__()
        self.inp = nn.Linear(dim + 2, width)
        self.emb = nn.Embedding(num_classes + 1, width)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, dim)
        self.null = num_classes
        self.calls = 0

    def forward(self, x, t, s, y=None):
        self.calls += 1
        if y is None:
            y = torch.full((x.shape[0],), self.null, device=x.device)
        h = torch.tanh(self.inp(torch.cat([x, t[:, None], s[:, None]], 1)) + self.emb(y))
        return self.out(self.drop(h))


def cfg_for(schedule="linear", param="euler", **kw):
    base = dict(num_classes=3, total_steps=100)
    base.update(kw)
    return soflow.SoFlowConfig(schedule=schedule, param=param, **base)

# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("field,value", [
    ("schedule", "cosine"), ("param", "heun"), ("r_schedule", "step"), ("sigma_fm", 0.0),
    ("sigma_s", -1.0), ("fm_ratio", 1.5), ("fm_ratio", -0.1), ("p", -1.0), ("eps", 0.0),
    ("r_init", 0.0), ("r_init", 1.5), ("r_end", 0.0), ("total_steps", 0), ("total_steps", 2.5),
    ("label_drop", 1.0), ("guidance_scale", 0.5), ("guidance_mix", 0.0), ("guidance_mix", 1.5), ("guidance_t_max", 0.0),
    ("num_classes", 0), ("mu_t", float("nan")), ("time_gap", 0.0), ("guidance_decay_k", 0.0),
    # not finite: nan fails every comparison, inf passes some (eps > 0, sigma > 0, w >= 1)
    ("eps", float("inf")), ("sigma_fm", float("inf")), ("guidance_scale", float("1e400")), ("mu_fm", float("-inf")),
    ("r_init", float("nan")), ("p", float("inf")), ("guidance_decay_k", float("inf")), ("mu_s", "0.2"),
])
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(ValueError, match=field):
        soflow.SoFlowConfig(**{field: value})


def test_config_rejects_increasing_r_and_guidance_without_labels():
    with pytest.raises(ValueError, match="r_end"):
        soflow.SoFlowConfig(r_init=0.01, r_end=0.1)
    with pytest.raises(ValueError, match="num_classes"):
        soflow.SoFlowConfig(num_classes=None)           # default w = 3 needs labels
    with pytest.raises(ValueError, match="unknown"):
        soflow.preset("imagenet", learning_rate=1.0)
    with pytest.raises(ValueError, match="preset"):
        soflow.preset("imagenet512")


def test_presets_match_the_paper_and_the_release():
    """The paper's Appendix A ('imagenet', 'cifar10') and the authors' imagenet.yaml and cifar.yaml."""
    p = soflow.PRESETS["imagenet"]
    assert (p.mu_fm, p.sigma_fm, p.mu_t, p.sigma_t, p.mu_s, p.sigma_s) == (-0.2, 1.0, 0.2, 0.8, -0.2, 0.8)
    assert (p.fm_ratio, p.p, p.r_init, p.r_end, p.guidance_scale, p.guidance_mix, p.label_drop) == (0.75, 1.0, 0.1, 1 / 320, 3.0, 0.25, 0.1)
    assert (p.schedule, p.param, p.r_schedule, p.num_classes) == ("linear", "euler", "exponential", 1000)
    r = soflow.PRESETS["imagenet_released"]
    assert (r.mu_fm, r.mu_s, r.mu_t, r.eps, r.r_init, r.r_end) == (-0.2, -1.0, 0.2, 0.01, 0.1, 0.002)
    c = soflow.PRESETS["cifar10"]
    assert (c.mu_fm, c.sigma_fm, c.mu_t, c.sigma_t, c.mu_s, c.sigma_s) == (-0.4, 1.7, -0.6, 1.5, -4.0, 1.5)
    assert (c.fm_ratio, c.p, c.r_init, c.r_end, c.total_steps, c.num_classes, c.guided) == (0.25, 0.5, 1 / 50, 1 / 2500, 800_000, None, False)
    c = soflow.PRESETS["cifar10_released"]
    assert (c.fm_ratio, c.p, c.eps, c.mu_fm, c.mu_s, c.mu_t, c.sigma_fm, c.r_init, c.r_end) == (0.0, 0.75, 0.001, -0.9, -4.0, -0.9, 1.6, 1.0, 0.0003125)

# ---------------------------------------------------------------- schedules and parameterizations

@pytest.mark.parametrize("name", soflow.SCHEDULE_NAMES)
def test_schedule_boundaries_and_derivatives(name):
    t = torch.linspace(0.01, 0.99, 17, dtype=torch.float64, requires_grad=True)
    alpha, beta, da, db = soflow.schedule(name, t)
    g_alpha, = torch.autograd.grad(alpha.sum(), t, retain_graph=True)
    g_beta, = torch.autograd.grad(beta.sum(), t)
    torch.testing.assert_close(da, g_alpha)
    torch.testing.assert_close(db, g_beta)
    ends = soflow.schedule(name, torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends[0], torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(ends[1], torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("schedule,param", COMBOS)
def test_boundary_condition_is_exact(schedule, param):
    cfg = cfg_for(schedule, param)
    net = SmoothNet()
    x = torch.randn(64, 2)
    t = torch.rand(64)
    y = torch.randint(0, 4, (64,))
    assert torch.equal(soflow.solution(net, cfg, x, t, t, y), x)      # f(x, t, t) = x exactly (Eq. 6)


@pytest.mark.parametrize("schedule,param", COMBOS)
def test_velocity_head_is_the_s_derivative_of_f(schedule, param):
    """Eq. 10: v_theta(x, t) = d/ds f_theta(x, t, s) at s = t, the b(t,t) d/ds F term
    included by autograd (it vanishes because b(t, t) = 0)."""
    cfg = cfg_for(schedule, param)
    net = SmoothNet().double()
    x = torch.randn(16, 2, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64) * 0.98 + 0.01
    y = torch.randint(0, 4, (16,))
    s = t.clone().requires_grad_(True)
    f = soflow.solution(net, cfg, x, t, s, y)
    # each sample's f depends on its own s only, so d f[:, k] / d s comes from one grad call per output dim
    dfds = torch.stack([torch.autograd.grad(f[:, k].sum(), s, retain_graph=True)[0] for k in range(2)], 1)
    torch.testing.assert_close(soflow.velocity(net, cfg, x, t, y), dfds)


@pytest.mark.parametrize("param", soflow.PARAM_NAMES)
def test_parameterization_coefficients_against_autograd(param):
    t = torch.rand(9, dtype=torch.float64)
    s = (t * torch.rand(9, dtype=torch.float64)).requires_grad_(True)
    a, b = soflow.coefficients(param, t, s)
    at, bt = soflow.coefficients(param, t, t)
    assert torch.equal(at, torch.ones_like(t)) and torch.equal(bt, torch.zeros_like(t))
    da, db = soflow.velocity_coefficients(param)
    ss = t.clone().requires_grad_(True)
    a2, b2 = soflow.coefficients(param, t, ss)
    ga = torch.autograd.grad(a2.sum(), ss)[0] if a2.requires_grad else torch.zeros_like(t)   # Euler: a = 1
    gb = torch.autograd.grad(b2.sum(), ss)[0]
    torch.testing.assert_close(ga, torch.full_like(t, da))
    torch.testing.assert_close(gb, torch.full_like(t, db))

# ---------------------------------------------------------------- times

@pytest.mark.parametrize("kind", soflow.R_SCHEDULES)
def test_r_schedules_hit_their_ends_and_decrease(kind):
    cfg = cfg_for(r_schedule=kind, r_init=0.1, r_end=1 / 320, total_steps=1000)
    rs = [soflow.r_at(cfg, k) for k in range(0, 1001, 10)]
    assert all(a >= b - 1e-15 for a, b in zip(rs, rs[1:]))
    assert rs[-1] == pytest.approx(1 / 320, rel=1e-12)
    assert rs[0] == pytest.approx(1 / 320 if kind == "constant" else 0.1, rel=1e-12)
    assert soflow.r_at(cfg, 5000) == pytest.approx(1 / 320)        # clamped past K
    mid = soflow.r_at(cfg, 500)
    expected = {"exponential": 0.1 * (1 / 32) ** 0.5, "cosine": 1 / 320 + (0.1 - 1 / 320) / 2,
                "linear": (0.1 + 1 / 320) / 2, "constant": 1 / 320}[kind]
    assert mid == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("mu_t,mu_s,r_init", [(0.2, -0.2, 0.1), (-6.0, 6.0, 1.0), (6.0, -6.0, 0.5), (0.0, 0.0, 1.0)])
def test_time_clamps_hold(mu_t, mu_s, r_init):
    cfg = cfg_for(mu_t=mu_t, mu_s=mu_s, sigma_t=3.0, sigma_s=3.0, r_init=r_init, r_end=0.001)
    g = torch.Generator().manual_seed(0)
    for step in (0, 50, 100):
        t, l, s = soflow.scm_times(cfg, 20000, step, generator=g)
        assert (t >= cfg.time_gap).all() and (t <= 1).all()
        assert (s < t).all() and (s >= 0).all()
        assert (l < t).all() and (l <= t - cfg.time_gap + 1e-7).all()
        assert (l >= s - 1e-6).all()          # l = s up to rounding when r = 1
        if r_init < 1:
            assert ((l > s) | (t - s <= cfg.time_gap + 1e-7)).all()
    t = soflow.fm_times(cfg, 10000, generator=g)
    assert ((t > 0) & (t < 1)).all()


def test_logit_normal_moments():
    g = torch.Generator().manual_seed(1)
    u = soflow.logit_normal(200_000, -0.4, 1.7, generator=g)
    z = torch.logit(u.double())
    assert abs(z.mean().item() + 0.4) < 0.02 and abs(z.std().item() - 1.7) < 0.02

# ---------------------------------------------------------------- guidance

def test_guidance_decay_shape():
    cfg = cfg_for()
    t = torch.linspace(0, 1, 1_000_001, dtype=torch.float64)
    d = soflow.guidance_decay(cfg, t)
    assert torch.equal(d[t <= 0.8], torch.ones_like(d[t <= 0.8]))
    assert d[-1].item() == 0.0
    assert (d[1:] <= d[:-1]).all()                                     # monotone
    # continuous: its steepest slope is about 80 per unit t, so steps of 1e-6 move it < 1e-3
    assert (d[1:] - d[:-1]).abs().max() < 1e-3
    # the released formula at a point inside the decay region
    tt = torch.tensor([0.9], dtype=torch.float64)
    dd = (1 - 0.9) / 0.2
    assert soflow.guidance_decay(cfg, tt).item() == pytest.approx(1 - math.exp(-0.025 * dd / (1 - dd)))


def test_mix_velocity_is_eq19():
    cfg = cfg_for(guidance_scale=2.5, guidance_mix=0.3)
    t = torch.tensor([0.1, 0.5, 0.8, 0.95])
    v_c, v_u, v_g = torch.randn(3, 4, 5)
    out = soflow.mix_velocity(cfg, t, v_c, v_u, v_g)
    for i in range(4):
        w = 1 + 1.5 * soflow.guidance_decay(cfg, t[i:i + 1]).item()
        ref = 0.3 * (w * v_c[i] + (1 - w) * v_u[i]) + 0.7 * v_g[i]
        torch.testing.assert_close(out[i], ref)
    # below t = 0.8 the strength is exactly w
    torch.testing.assert_close(out[0], 0.3 * (2.5 * v_c[0] - 1.5 * v_u[0]) + 0.7 * v_g[0])


def test_label_dropout_rate_and_null_label():
    cfg = cfg_for(num_classes=10, label_drop=0.1)
    y = torch.randint(0, 10, (100_000,))
    y2, keep = soflow.drop_labels(cfg, y, torch.Generator().manual_seed(0))
    assert abs((~keep).float().mean().item() - 0.1) < 0.005
    assert (y2[~keep] == 10).all() and torch.equal(y2[keep], y[keep])

# ---------------------------------------------------------------- losses

@pytest.mark.parametrize("param", soflow.PARAM_NAMES)
def test_fm_loss_equals_hand_computation(param):
    cfg = cfg_for(param=param, p=0.75, eps=0.01)
    net = SmoothNet().double()
    x0, x1 = torch.randn(2, 6, 2, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    x_t = (1 - t)[:, None] * x0 + t[:, None] * x1
    v_c = x1 - x0
    loss, mse, adaptive = soflow.fm_loss(net, cfg, x_t, t, y, v_c)
    db = 1.0 if param == "euler" else math.pi / 2
    expected, expected_mse = 0.0, []
    for i in range(6):
        F = net(x_t[i:i + 1], t[i:i + 1], t[i:i + 1], y[i:i + 1])[0]
        v = db * F                                                    # d/ds a = 0 for both
        e = ((v - v_c[i]) ** 2).mean()
        w = 1 / (abs(db) * (e.item() + 0.01) ** 0.75)                 # Eq. 12
        expected = expected + w * e / 6
        expected_mse.append(e.item())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(mse, torch.tensor(expected_mse, dtype=torch.float64))
    # the weight is a constant: the gradient is w * d(MSE), not d(w * MSE)
    g = torch.autograd.grad(loss, list(net.parameters()))
    g_ref = torch.autograd.grad(expected, list(net.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("schedule,param", COMBOS)
@pytest.mark.parametrize("p", [0.0, 0.75, 1.0])
def test_stable_scm_loss_has_the_gradient_of_eq14_with_eq15(schedule, param, p):
    cfg = cfg_for(schedule, param, p=p, eps=0.01)
    net = SmoothNet().double()
    g = torch.Generator().manual_seed(3)
    B = 12
    x0, x1 = torch.randn(2, B, 2, dtype=torch.float64, generator=g)
    t, l, s = soflow.scm_times(cfg, B, step=0, generator=g)
    t, l, s = t.double(), l.double(), s.double()
    x_t, v = soflow.interpolate(cfg, x0, x1, t)
    y = torch.randint(0, 4, (B,), generator=g)
    loss, mse, _ = soflow.scm_loss(net, cfg, x_t, t, l, s, y, v)
    grads = torch.autograd.grad(loss, list(net.parameters()))

    # Eq. 14 with Eq. 15, written directly
    f_t = soflow.solution(net, cfg, x_t, t, s, y)
    x_l = x_t + v * (l - t)[:, None]
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_l, l, s, y)
    e = ((f_t - f_l) ** 2).mean(1)
    _, b = soflow.coefficients(param, t, s)
    w = 1 / ((t - l) * b.abs()) / (e.detach() / (t - l) ** 2 + 0.01) ** p
    ref = (w * e).mean()
    ref_grads = torch.autograd.grad(ref, list(net.parameters()))
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(2 * a, r, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mse, e.detach())


def test_both_consistency_forwards_see_the_same_dropout_mask():
    torch.manual_seed(0)
    net = SmoothNet(dropout=0.5)
    masks = []
    net.drop.register_forward_hook(lambda m, inp, out: masks.append((out == 0) & (inp[0] != 0)))
    cfg = cfg_for(fm_ratio=0.0, guidance_scale=1.0, guidance_mix=1.0)
    soflow.soflow_loss(net, cfg, torch.randn(32, 2), torch.randint(0, 3, (32,)))
    assert len(masks) == 2 and masks[0].any()
    assert torch.equal(masks[0], masks[1])
    soflow.soflow_loss(net, cfg, torch.randn(32, 2), torch.randint(0, 3, (32,)))
    assert not torch.equal(masks[0], masks[2])        # and the RNG still moves on between steps


@pytest.mark.parametrize("fm_ratio,expected_calls", [(0.75, 3), (0.0, 2), (1.0, 1)])
def test_guidance_off_makes_no_extra_network_calls(fm_ratio, expected_calls):
    x0, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    net = SmoothNet()
    soflow.soflow_loss(net, cfg_for(fm_ratio=fm_ratio, guidance_scale=1.0, guidance_mix=1.0), x0, y)
    assert net.calls == expected_calls
    net.calls = 0
    unconditional = soflow.SoFlowConfig(fm_ratio=fm_ratio, num_classes=None, guidance_scale=1.0, guidance_mix=1.0)
    soflow.soflow_loss(net, unconditional, x0)
    assert net.calls == expected_calls
    net.calls = 0
    soflow.soflow_loss(net, cfg_for(fm_ratio=fm_ratio), x0, y)          # guidance on: one batched extra pass
    assert net.calls == expected_calls + 1


def reference_loss(net, cfg, x0, y, step, generator):
    """Algorithm 1 written out sample by sample for the linear schedule and Euler
    parameterization, with Eq. 14/15 (not the stable form) and every guidance velocity
    from its own network call. It draws random numbers in soflow_loss's order:
    noise, flow matching times, consistency t then s, label dropout."""
    B = x0.shape[0]
    n = int(cfg.fm_ratio * B + 0.5)
    x1 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    sig = lambda mu, sd, k: torch.sigmoid(mu + sd * torch.randn(k, generator=generator))
    t_fm = sig(cfg.mu_fm, cfg.sigma_fm, n)
    t_sc = sig(cfg.mu_t, cfg.sigma_t, B - n).clamp(min=1e-4)
    s_sc = torch.minimum(sig(cfg.mu_s, cfg.sigma_s, B - n), t_sc - 1e-4)
    r = soflow.r_at(cfg, step)
    l_sc = torch.minimum(t_sc + (s_sc - t_sc) * r, t_sc - 1e-4)
    t_fm, t_sc, s_sc, l_sc = (u.to(x0.dtype) for u in (t_fm, t_sc, s_sc, l_sc))   # drawn in float32
    keep = torch.rand(B, generator=generator) >= cfg.label_drop
    null = torch.tensor([cfg.num_classes])
    F = lambda x, t, s, c: net(x[None], t.reshape(1).to(x.dtype), s.reshape(1).to(x.dtype), c.reshape(1))[0]
    L_fm, L_sc = 0.0, 0.0
    for i in range(B):
        t = t_fm[i] if i < n else t_sc[i - n]
        x_t = (1 - t) * x0[i] + t * x1[i]
        v_c = x1[i] - x0[i]
        c = y[i] if keep[i] else null[0]
        if keep[i]:
            with torch.no_grad():
                v_unc = F(x_t, t, t, null)                                # Euler: v = F(x, t, t)
                v_gui = F(x_t, t, t, c)
            w = 1 + (cfg.guidance_scale - 1) * soflow.guidance_decay(cfg, t.reshape(1)).item()
            v = cfg.guidance_mix * (w * v_c + (1 - w) * v_unc) + (1 - cfg.guidance_mix) * v_gui    # Eq. 19
        else:
            v = v_c
        if i < n:                                                         # Eq. 11, 12
            e = ((F(x_t, t, t, c) - v) ** 2).mean()
            L_fm = L_fm + e / (e.item() + cfg.eps) ** cfg.p / n
        else:                                                             # Eq. 14, 15
            s, l = s_sc[i - n], l_sc[i - n]
            f_t = x_t + (s - t) * F(x_t, t, s, c)
            x_l = x_t + v * (l - t)
            with torch.no_grad():
                f_l = x_l + (s - l) * F(x_l, l, s, c)
            e = ((f_t - f_l) ** 2).mean()
            wt = 1 / ((t - l) * (t - s)) / (e.item() / (t - l) ** 2 + cfg.eps) ** cfg.p
            L_sc = L_sc + wt * e / (B - n)
    # the stable form's gradient is half of Eq. 14's: compare against L_sc / 2
    return cfg.fm_ratio * L_fm + (1 - cfg.fm_ratio) * L_sc / 2


@pytest.mark.parametrize("guided", [True, False])
def test_soflow_loss_matches_a_per_sample_reference(guided):
    torch.manual_seed(0)
    net = SmoothNet(num_classes=5).double()
    cfg = cfg_for(num_classes=5, fm_ratio=0.5, p=1.0, eps=0.01, label_drop=0.3,
                  guidance_scale=3.0 if guided else 1.0, guidance_mix=0.25 if guided else 1.0,
                  mu_t=1.5, sigma_t=1.0)     # many t above 0.8: the guidance decay matters
    x0 = torch.randn(24, 2, dtype=torch.float64)
    y = torch.randint(0, 5, (24,))
    loss, logs = soflow.soflow_loss(net, cfg, x0, y, step=30, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad(loss, list(net.parameters()))
    ref = reference_loss(net, cfg, x0, y, step=30, generator=torch.Generator().manual_seed(7))
    ref_grads = torch.autograd.grad(ref, list(net.parameters()))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    assert set(logs) == {"loss", "fm_mse", "fm_weight", "scm_mse", "scm_weight"}
    assert all(v.requires_grad is False for v in logs.values())

# ---------------------------------------------------------------- samplers with an exact solution function

class ExactNet(nn.Module):
    """The exact solution function of a Gaussian mixture (scipy's ODE solver) in the
    role of F: F = (f* - a x) / b for s < t, and the velocity head's F for s = t."""

    def __init__(self, mixture, cfg):
        super().__init__()
        self.mixture, self.cfg = mixture, cfg

    def forward(self, x, t, s, y=None):
        t0, s0 = float(t[0]), float(s[0])
        assert torch.all(t == t0) and torch.all(s == s0)
        xn = x.double().numpy()
        if s0 == t0:
            da, db = soflow.velocity_coefficients(self.cfg.param)
            v = self.mixture.velocity(xn, t0, self.cfg.schedule)
            return torch.from_numpy((v - da * xn) / db).to(x.dtype)
        f = self.mixture.solve(xn, t0, s0, self.cfg.schedule, rtol=1e-10, atol=1e-10)
        a, b = (float(c) for c in soflow.coefficients(self.cfg.param, torch.tensor(t0), torch.tensor(s0)))
        return torch.from_numpy((f - a * xn) / b).to(x.dtype)


@pytest.mark.parametrize("schedule,param", [("linear", "euler"), ("trig", "trig")])
def test_samplers_are_exact_with_the_exact_solution_function(schedule, param):
    mixture = toy2d.default_mixture()
    cfg = soflow.SoFlowConfig(schedule=schedule, param=param, num_classes=None, guidance_scale=1.0, guidance_mix=1.0)
    net = ExactNet(mixture, cfg)
    x1 = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = torch.from_numpy(mixture.solve(x1.numpy(), 1.0, 0.0, schedule, rtol=1e-11, atol=1e-11))
    torch.testing.assert_close(soflow.sample(net, cfg, x1), exact, atol=1e-6, rtol=0)
    for steps in (2, 3):
        torch.testing.assert_close(soflow.sample_chain(net, cfg, x1, steps=steps), exact, atol=1e-6, rtol=0)
    uneven = [1.0, 0.7, 0.2, 0.0]
    torch.testing.assert_close(soflow.sample_chain(net, cfg, x1, times=uneven), exact, atol=1e-6, rtol=0)
    # Euler on the exact velocity converges to the exact map at first order
    e10 = (soflow.sample_euler(net, cfg, x1, steps=10) - exact).norm(dim=1).mean()
    e40 = (soflow.sample_euler(net, cfg, x1, steps=40) - exact).norm(dim=1).mean()
    assert e40 < e10 / 2.5


def test_renoise_sampler_is_exact_in_distribution():
    """With the exact f, re-noising gives exact data samples whatever the noise: for a
    single Gaussian N(mu, sd^2 I) the output's mean and std match within sampling error."""
    mixture = toy2d.GaussianMixture([[0.7, -0.4]], 0.3, [1.0])
    cfg = soflow.SoFlowConfig(num_classes=None, guidance_scale=1.0, guidance_mix=1.0)
    net = ExactNet(mixture, cfg)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(40_000, 2, dtype=torch.float64, generator=g)
    for steps in (2, 4):
        out = soflow.sample_renoise(net, cfg, x1, steps=steps, generator=g)
        se = 0.3 / math.sqrt(len(out))
        assert (out.mean(0) - torch.tensor([0.7, -0.4], dtype=torch.float64)).abs().max() < 4 * se
        assert (out.std(0) - 0.3).abs().max() < 0.01
    # and the re-noised intermediate actually differs from the deterministic chain
    chain = soflow.sample_chain(net, cfg, x1[:100], steps=2)
    renoise = soflow.sample_renoise(net, cfg, x1[:100], steps=2, generator=g)
    assert (chain - renoise).abs().max() > 0.1


def test_sampler_times_are_validated():
    net, cfg = SmoothNet(), cfg_for()
    x1 = torch.randn(4, 2)
    for bad in ([1.0, 0.5], [0.9, 0.0], [1.0, 0.5, 0.6, 0.0], [1.0]):
        with pytest.raises(ValueError, match="times"):
            soflow.sample_chain(net, cfg, x1, times=bad)
    with pytest.raises(ValueError, match="steps"):
        soflow.sample_renoise(net, cfg, x1, steps=0)
    with pytest.raises(ValueError, match="2 re-noising steps need as many noise tensors, got 1"):
        soflow.sample_renoise(net, cfg, x1, steps=3, noise=[torch.randn(4, 2)])
    with pytest.raises(ValueError, match="labels were given but the config is unconditional"):
        soflow.soflow_loss(net, cfg.replace(**soflow.UNCONDITIONAL), x1, y=torch.zeros(4, dtype=torch.long))


def test_solution_with_a_precomputed_output_is_a_x_plus_b_F():
    cfg = cfg_for(param="trig")
    net = SmoothNet()
    x, y = torch.randn(8, 2), torch.randint(0, 4, (8,))
    t = torch.rand(8)
    s = t * torch.rand(8)
    F = torch.randn(8, 2)
    a, b = torch.cos(math.pi / 2 * (s - t)), torch.sin(math.pi / 2 * (s - t))
    torch.testing.assert_close(soflow.solution(None, cfg, x, t, s, F=F), a[:, None] * x + b[:, None] * F)
    assert torch.equal(soflow.solution(net, cfg, x, t, s, y), soflow.solution(None, cfg, x, t, s, F=net(x, t, s, y)))


def test_trajectory_solution_and_euler_paths():
    """'solution': f(x1, 1, s) at each time, starting at x1 exactly; 'euler': one Euler step on the
    velocity head per interval, written out here, ending where sample_euler ends."""
    torch.manual_seed(0)
    net, cfg = SmoothNet(), cfg_for()
    x1, y = torch.randn(16, 2), torch.randint(0, 4, (16,))
    times = [1.0, 0.7, 0.25, 0.0]
    path = soflow.trajectory(net, cfg, x1, times, "solution", y)
    assert path.shape == (4, 16, 2) and torch.equal(path[0], x1)
    for i, s in enumerate(times):
        one = torch.ones(16)
        torch.testing.assert_close(path[i], x1 + (s - 1) * net(x1, one, s * one, y).detach())
    path = soflow.trajectory(net, cfg, x1, times, "euler", y)
    x = x1
    for i, (t, s) in enumerate(zip(times, times[1:])):
        x = x + (s - t) * net(x, torch.full((16,), t), torch.full((16,), t), y).detach()
        torch.testing.assert_close(path[i + 1], x)
    assert torch.equal(path[-1], soflow.sample_euler(net, cfg, x1, y, times=times))
    with pytest.raises(ValueError, match="kind"):
        soflow.trajectory(net, cfg, x1, times, "chain")
    with pytest.raises(ValueError, match="times"):
        soflow.trajectory(net, cfg, x1, [1.0, 0.5])


class CountingNet(SmoothNet):
    """Counts the rows the network sees, with and without gradient."""

    def __init__(self):
        super().__init__()
        self.rows = {True: 0, False: 0}

    def forward(self, x, t, s, y=None):
        self.rows[torch.is_grad_enabled()] += x.shape[0]
        return super().forward(x, t, s, y)


@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize("fm_ratio", [0.0, 0.25, 0.75, 1.0])
@pytest.mark.parametrize("batch", [1, 7, 32])
def test_forward_passes_counts_the_network_calls(guided, fm_ratio, batch):
    cfg = cfg_for(fm_ratio=fm_ratio, guidance_scale=3.0 if guided else 1.0, guidance_mix=0.25 if guided else 1.0)
    net = CountingNet()
    soflow.soflow_loss(net, cfg, torch.randn(batch, 2), torch.randint(0, 3, (batch,)))
    assert soflow.forward_passes(cfg, batch) == (net.rows[True], net.rows[False])
    unconditional = soflow.SoFlowConfig(fm_ratio=fm_ratio, num_classes=None, guidance_scale=1.0, guidance_mix=1.0)
    net = CountingNet()
    soflow.soflow_loss(net, unconditional, torch.randn(batch, 2))
    assert soflow.forward_passes(unconditional, batch) == (net.rows[True], net.rows[False])


def test_fm_count_rounds_half_up():
    for lam, B, n in [(0.25, 2, 1), (0.75, 32, 24), (0.25, 1024, 256), (0.0, 7, 0), (1.0, 7, 7), (0.5, 3, 2)]:
        assert soflow.fm_count(cfg_for(fm_ratio=lam), B) == n


@pytest.mark.parametrize("guided", [True, False])
def test_net_kwargs_reach_every_call_with_the_rows_of_its_samples(guided):
    """Per-sample extra inputs (the U-Net's augmentation labels) go with their samples:
    each call sees exactly the rows of the samples it evaluates."""
    seen = []

    class Recorder(SmoothNet):
        def forward(self, x, t, s, y=None, tag=None):
            seen.append((x.shape[0], tag.clone()))
            return super().forward(x, t, s, y) + tag[:, None]

    net = Recorder()
    cfg = cfg_for(fm_ratio=0.25, guidance_scale=3.0 if guided else 1.0, guidance_mix=0.25 if guided else 1.0)
    B = 8
    tag = torch.arange(B, dtype=torch.float32) * 10
    soflow.soflow_loss(net, cfg, torch.randn(B, 2), torch.randint(0, 3, (B,)), net_kwargs={"tag": tag})
    n = soflow.fm_count(cfg, B)
    expected = ([torch.cat([tag, tag[n:]])] if guided else []) + [tag[:n], tag[n:], tag[n:]]
    assert len(seen) == len(expected)
    for (rows, got), want in zip(seen, expected):
        assert rows == len(want) and torch.equal(got, want)
