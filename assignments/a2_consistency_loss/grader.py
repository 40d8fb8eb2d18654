"""
Grader of assignment 2 (the solution consistency loss).

    python -m pytest -q assignments/a2_consistency_loss/grader.py                 # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a2_consistency_loss/grader.py

The loss's value is checked against Eq. 14 and Eq. 15 written out sample by sample
here; its gradient against soflow.scm_loss (the released code's stable form,
whose gradient is half of Eq. 14's); the shared dropout mask with a dropout
network; and the whole loss by a short training run on a Gaussian, whose exact
solution map is known in closed form.
"""

import math

import pytest
import torch
import torch.nn as nn

import soflow
import toy2d

COMBOS = [("linear", "euler"), ("trig", "trig"), ("linear", "trig")]


class SmoothNet(nn.Module):
    """A small random network F(x, t, s, y) on 2-D points."""

    def __init__(self, num_classes=3, width=32, dropout=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(4, width)
        self.emb = nn.Embedding(num_classes + 1, width)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, 2)
        self.null = num_classes

    def forward(self, x, t, s, y=None):
        if y is None:
            y = torch.full((x.shape[0],), self.null, device=x.device)
        h = torch.tanh(self.inp(torch.cat([x, t[:, None], s[:, None]], 1)) + self.emb(y))
        return self.out(self.drop(h))


def batch(cfg, n=12, seed=0, dtype=torch.float64):
    """x_t, t, l, s, y and the conditional velocity, with soflow's own time sampler."""
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(2, n, 2, generator=g, dtype=dtype)
    t, l, s = (u.to(dtype) for u in soflow.scm_times(cfg, n, step=cfg.total_steps // 3, generator=g))
    x_t, v = soflow.interpolate(cfg, x0, x1, t)
    y = torch.randint(0, 4, (n,), generator=g)
    return x_t, t, l, s, y, v


def config(schedule="linear", param="euler", p=1.0, **kw):
    return soflow.SoFlowConfig(schedule=schedule, param=param, p=p, eps=0.01, num_classes=3,
                               r_init=0.5, r_end=0.05, total_steps=30, **kw)


def grads(loss, net):
    return torch.autograd.grad(loss, list(net.parameters()))


def assert_grads_close(got, ref, what):
    for a, b in zip(got, ref):
        if not torch.allclose(a, b, rtol=1e-7, atol=1e-10):
            raise AssertionError(f"{what}: gradients differ (max abs difference {(a - b).abs().max():.3g})")

# ------------------------------------------------------------------ Eq. 14 with Eq. 15

@pytest.mark.points(3)
@pytest.mark.parametrize("schedule,param", COMBOS)
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_loss_value_is_eq14_with_eq15(sub, schedule, param, p):
    cfg = config(schedule, param, p)
    net = SmoothNet(seed=1).double()
    x_t, t, l, s, y, v = batch(cfg, seed=1)
    loss, mse = sub.consistency_loss(net, cfg, x_t, t, l, s, y, v)
    expected, expected_mse = 0.0, []
    for i in range(len(t)):                                   # one sample at a time, straight from the paper
        ti, li, si = t[i:i + 1], l[i:i + 1], s[i:i + 1]
        a, b = soflow.coefficients(param, ti, si)
        f_t = a * x_t[i] + b * net(x_t[i:i + 1], ti, si, y[i:i + 1])[0]
        x_l = x_t[i] + v[i] * (li - ti)
        a, b_l = soflow.coefficients(param, li, si)
        f_l = a * x_l + b_l * net(x_l[None], li, si, y[i:i + 1])[0]
        e = ((f_t - f_l) ** 2).mean().item()
        w = 1 / ((ti - li) * abs(b)) / (e / (ti - li) ** 2 + cfg.eps) ** p
        expected += w.item() * e / len(t)
        expected_mse.append(e)
    assert loss.ndim == 0, "the loss must be a scalar"
    assert mse.shape == t.shape and not mse.requires_grad, "mse: per-sample values (B,), detached"
    torch.testing.assert_close(mse, torch.tensor(expected_mse, dtype=torch.float64), rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(loss.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-14)


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule,param", COMBOS)
def test_target_is_a_stop_gradient(sub, schedule, param):
    """With p = 0 the weight is a plain number, so only the target's stop-gradient
    decides the gradient: it must be twice soflow.scm_loss's."""
    cfg = config(schedule, param, p=0.0)
    net = SmoothNet(seed=2).double()
    x_t, t, l, s, y, v = batch(cfg, seed=2)
    ref = grads(soflow.scm_loss(net, cfg, x_t, t, l, s, y, v)[0], net)
    got = grads(sub.consistency_loss(net, cfg, x_t, t, l, s, y, v)[0], net)
    assert_grads_close(got, [2 * r for r in ref], "with p = 0, against 2 x soflow.scm_loss")


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule,param", COMBOS)
@pytest.mark.parametrize("p", [0.5, 1.0])
def test_gradient_matches_soflow(sub, schedule, param, p):
    """With p > 0 the adaptive weight must be a constant too: gradient = w * grad(MSE)."""
    cfg = config(schedule, param, p=p)
    net = SmoothNet(seed=3).double()
    x_t, t, l, s, y, v = batch(cfg, seed=3)
    ref = grads(soflow.scm_loss(net, cfg, x_t, t, l, s, y, v)[0], net)
    got = grads(sub.consistency_loss(net, cfg, x_t, t, l, s, y, v)[0], net)
    assert_grads_close(got, [2 * r for r in ref], f"with p = {p}, against 2 x soflow.scm_loss")


@pytest.mark.points(1)
def test_both_passes_see_the_same_dropout_mask(sub):
    cfg = config()
    net = SmoothNet(dropout=0.5, seed=4).double()
    masks = []
    net.drop.register_forward_hook(lambda m, inp, out: masks.append((out == 0) & (inp[0] != 0)))
    x_t, t, l, s, y, v = batch(cfg, n=64, seed=4)
    sub.consistency_loss(net, cfg, x_t, t, l, s, y, v)
    assert len(masks) == 2, f"expected two network passes, got {len(masks)}"
    assert masks[0].any(), "dropout should be active (the network is in training mode)"
    assert torch.equal(masks[0], masks[1]), "the two passes drew different dropout masks"
    sub.consistency_loss(net, cfg, x_t, t, l, s, y, v)
    assert not torch.equal(masks[0], masks[2]), "the random state must move on between calls"

# ------------------------------------------------------------------ the stable form

@pytest.mark.points(2)
@pytest.mark.parametrize("schedule,param", COMBOS)
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_stable_form_value_and_gradient(sub, schedule, param, p):
    cfg = config(schedule, param, p=p)
    net = SmoothNet(seed=6).double()
    x_t, t, l, s, y, v = batch(cfg, seed=6)
    ref_loss = soflow.scm_loss(net, cfg, x_t, t, l, s, y, v)[0]
    loss = sub.consistency_loss_stable(net, cfg, x_t, t, l, s, y, v)
    assert loss.ndim == 0, "the loss must be a scalar"
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-9, atol=1e-14)
    got = grads(loss, net)
    assert_grads_close(got, grads(ref_loss, net), "stable form against soflow.scm_loss")
    # half the gradient of the direct form (Eq. 14 with Eq. 15), whatever the submission's direct form does
    f_t = soflow.solution(net, cfg, x_t, t, s, y)
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_t + v * (l - t)[:, None], l, s, y)
    e = ((f_t - f_l) ** 2).mean(1)
    _, b = soflow.coefficients(param, t, s)
    direct = (e / ((t - l) * b.abs()) / (e.detach() / (t - l) ** 2 + cfg.eps) ** p).mean()
    assert_grads_close([2 * g for g in got], grads(direct, net), "2 x stable form against Eq. 14")

# ------------------------------------------------------------------ behaviour: a training run

MU, STD = torch.tensor([0.8, -0.5]), 0.4       # the data: a single Gaussian N(MU, STD^2 I)


def exact_map(x, t, s):
    """The exact solution function of the linear schedule for N(MU, STD^2 I): x_t is
    Gaussian with mean (1 - t) MU and std sd(t) = sqrt((1 - t)^2 STD^2 + t^2) per
    coordinate, and the ODE keeps each point's standardized coordinate."""
    sd = lambda u: ((1 - u) ** 2 * STD**2 + u**2).sqrt()[:, None]
    return (1 - s)[:, None] * MU + sd(s) / sd(t) * (x - (1 - t)[:, None] * MU)


def train(loss_fn, steps=400, seed=0, batch_size=256):
    """The MLP of toy2d.py trained with L = lambda L_FM + (1 - lambda) L_SCM, where
    L_FM is soflow.fm_loss and L_SCM is loss_fn. Returns the RMSE of f(x_t, t, s)
    against the exact map over t ~ U(0.1, 1), s ~ U(0, t), x_t ~ p_t, and the RMSE
    of the one-step samples f(x1, 1, 0)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    # times concentrated near t = 1 and s = 0, large l-gaps early: the exact map spreads in few steps
    cfg = toy2d.toy_defaults(steps).replace(mu_t=1.0, mu_s=-1.0, r_init=0.5, r_end=0.05)
    net = toy2d.MLP(width=64, depth=3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    n = soflow.fm_count(cfg, batch_size)
    for step in range(steps):
        x0 = MU + STD * torch.randn(batch_size, 2, generator=g)
        x1 = torch.randn(batch_size, 2, generator=g)
        t_fm = soflow.fm_times(cfg, n, generator=g)
        t, l, s = soflow.scm_times(cfg, batch_size - n, step, generator=g)
        x_t, v = soflow.interpolate(cfg, x0, x1, torch.cat([t_fm, t]))
        loss_fm = soflow.fm_loss(net, cfg, x_t[:n], t_fm, None, v[:n])[0]
        loss_sc = loss_fn(net, cfg, x_t[n:], t, l, s, None, v[n:])
        loss = cfg.fm_ratio * loss_fm + (1 - cfg.fm_ratio) * loss_sc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    g = torch.Generator().manual_seed(123)
    t = 0.1 + 0.9 * torch.rand(2000, generator=g)
    s = t * torch.rand(2000, generator=g)
    x = exact_map(torch.randn(2000, 2, generator=g), torch.ones(2000), t)       # x_t ~ p_t
    rmse = lambda a, b: (a - b).norm(dim=1).square().mean().sqrt().item()
    with torch.no_grad():
        err = rmse(soflow.solution(net, cfg, x, t, s), exact_map(x, t, s))
        x1 = torch.randn(2000, 2, generator=g)
        err_1nfe = rmse(soflow.sample(net, cfg, x1), exact_map(x1, torch.ones(2000), torch.zeros(2000)))
    return err, err_1nfe


@pytest.mark.points(2)
def test_training_learns_the_exact_solution_map(sub, prerequisites):
    prerequisites("test_loss_value_is_eq14_with_eq15", "test_target_is_a_stop_gradient")
    err, err_1nfe = train(lambda *a: sub.consistency_loss(*a)[0])
    # reference: about 0.06 (one-step samples about 0.3); flow matching alone: about 0.37
    assert math.isfinite(err) and err < 0.1, (
        f"after 400 steps f(x_t, t, s) is {err:.3f} (RMSE) from the exact map (one-step samples: "
        f"{err_1nfe:.3f}); the reference loss gets below 0.1, flow matching alone about 0.37")
