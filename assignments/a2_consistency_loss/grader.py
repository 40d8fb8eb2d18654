"""
Grader of assignment 2 (the solution consistency loss).

    python -m pytest -q assignments/a2_consistency_loss/grader.py                 # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a2_consistency_loss/grader.py

The loss's value is checked against Eq. 14 and Eq. 15 written out sample by sample
here; its gradient against soflow.scm_loss (the released code's stable form,
whose gradient is half of Eq. 14's); the shared dropout mask with a dropout
network; and the whole loss by a short training run on a Gaussian, whose exact
solution map is known in closed form. The functions marked @in_submission run in the
submission's process and only return values; the tests check them here (runner.py).
"""

import math

import pytest
import torch
import torch.nn as nn

import soflow
import toynet
from checks import close, grads_close
from runner import in_submission

FUNCTIONS = ("consistency_loss", "consistency_loss_stable")
COMBOS = [("linear", "euler"), ("trig", "trig"), ("linear", "trig")]


class SmoothNet(nn.Module):
    """A small random network F(x, t, s, y) on 2-D points (the same seed, the same network)."""

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


def setting(schedule, param, p, seed):
    """The config, the network and the batch of one check, the same in both processes."""
    cfg = config(schedule, param, p)
    return cfg, SmoothNet(seed=seed).double(), batch(cfg, seed=seed)


def grads(loss, net):
    return list(torch.autograd.grad(loss, list(net.parameters())))

# ------------------------------------------------------------------ Eq. 14 with Eq. 15

@in_submission
def loss_value(sub, schedule, param, p):
    cfg, net, b = setting(schedule, param, p, seed=1)
    loss, mse = sub.consistency_loss(net, cfg, *b)
    return loss.detach(), loss.ndim, mse, mse.requires_grad


@pytest.mark.points(3)
@pytest.mark.parametrize("schedule,param", COMBOS)
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_loss_value_is_eq14_with_eq15(sub, schedule, param, p):
    loss, ndim, mse, mse_grad = sub.run(loss_value, schedule, param, p)
    cfg, net, (x_t, t, l, s, y, v) = setting(schedule, param, p, seed=1)
    expected, expected_mse = 0.0, []
    with torch.no_grad():
        for i in range(len(t)):                               # one sample at a time, straight from the paper
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
    assert ndim == 0, f"the loss must be a scalar, it has {ndim} dimensions"
    assert not mse_grad, "mse must be detached"
    close(mse, expected_mse, "the per-sample MSE between f(x_t, t, s) and f(x_l, l, s)", 1e-14, 1e-9)
    close(loss, expected, "the loss (Eq. 14 weighted by Eq. 15)", 1e-14, 1e-9)


@in_submission
def loss_gradient(sub, schedule, param, p):
    cfg, net, b = setting(schedule, param, p, seed=2)
    return grads(sub.consistency_loss(net, cfg, *b)[0], net)


def soflow_gradient(schedule, param, p, seed):
    cfg, net, b = setting(schedule, param, p, seed)
    return grads(soflow.scm_loss(net, cfg, *b)[0], net)


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule,param", COMBOS)
def test_target_is_a_stop_gradient(sub, schedule, param):
    """With p = 0 the weight is a plain number, so only the target's stop-gradient
    decides the gradient: it must be twice soflow.scm_loss's."""
    got = sub.run(loss_gradient, schedule, param, 0.0)
    ref = soflow_gradient(schedule, param, 0.0, seed=2)
    grads_close(got, [2 * r for r in ref], "the gradient with p = 0, against 2 x soflow.scm_loss's")


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule,param", COMBOS)
@pytest.mark.parametrize("p", [0.5, 1.0])
def test_gradient_matches_soflow(sub, schedule, param, p):
    """With p > 0 the adaptive weight must be a constant too: gradient = w * grad(MSE)."""
    got = sub.run(loss_gradient, schedule, param, p)
    ref = soflow_gradient(schedule, param, p, seed=2)
    grads_close(got, [2 * r for r in ref], f"the gradient with p = {p}, against 2 x soflow.scm_loss's")


@in_submission
def dropout_masks(sub):
    cfg = config()
    net = SmoothNet(dropout=0.5, seed=4).double()
    masks = []
    net.drop.register_forward_hook(lambda m, inp, out: masks.append((out == 0) & (inp[0] != 0)))
    b = batch(cfg, n=64, seed=4)
    sub.consistency_loss(net, cfg, *b)
    passes = len(masks)
    sub.consistency_loss(net, cfg, *b)
    return passes, masks


@pytest.mark.points(1)
def test_both_passes_see_the_same_dropout_mask(sub):
    passes, masks = sub.run(dropout_masks)
    assert passes == 2, f"expected two network passes, got {passes}"
    assert masks[0].any(), "dropout should be active (the network is in training mode)"
    assert torch.equal(masks[0], masks[1]), (
        f"the two passes drew different dropout masks ({int((masks[0] != masks[1]).sum())} of "
        f"{masks[0].numel()} units differ): restore the random state between them")
    assert not torch.equal(masks[0], masks[2]), "the random state must move on between calls"

# ------------------------------------------------------------------ the stable form

@in_submission
def stable_form(sub, schedule, param, p):
    cfg, net, b = setting(schedule, param, p, seed=6)
    loss = sub.consistency_loss_stable(net, cfg, *b)
    return loss.detach(), loss.ndim, grads(loss, net)


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule,param", COMBOS)
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_stable_form_value_and_gradient(sub, schedule, param, p):
    loss, ndim, got = sub.run(stable_form, schedule, param, p)
    cfg, net, (x_t, t, l, s, y, v) = setting(schedule, param, p, seed=6)
    ref_loss = soflow.scm_loss(net, cfg, x_t, t, l, s, y, v)[0]
    assert ndim == 0, f"the loss must be a scalar, it has {ndim} dimensions"
    close(loss, ref_loss.detach(), "the stable form's value, against soflow.scm_loss", 1e-14, 1e-9)
    grads_close(got, grads(ref_loss, net), "the stable form's gradient, against soflow.scm_loss's")
    # half the gradient of the direct form (Eq. 14 with Eq. 15), whatever the submission's direct form does
    f_t = soflow.solution(net, cfg, x_t, t, s, y)
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_t + v * (l - t)[:, None], l, s, y)
    e = ((f_t - f_l) ** 2).mean(1)
    _, b = soflow.coefficients(param, t, s)
    direct = (e / ((t - l) * b.abs()) / (e.detach() / (t - l) ** 2 + cfg.eps) ** p).mean()
    grads_close([2 * g for g in got], grads(direct, net), "2 x the stable form's gradient, against Eq. 14's")

# ------------------------------------------------------------------ behaviour: a training run

MU, STD = torch.tensor([0.8, -0.5]), 0.4       # the data: a single Gaussian N(MU, STD^2 I)


def exact_map(x, t, s):
    """The exact solution function of the linear schedule for N(MU, STD^2 I): x_t is
    Gaussian with mean (1 - t) MU and std sd(t) = sqrt((1 - t)^2 STD^2 + t^2) per
    coordinate, and the ODE keeps each point's standardized coordinate."""
    sd = lambda u: ((1 - u) ** 2 * STD**2 + u**2).sqrt()[:, None]
    return (1 - s)[:, None] * MU + sd(s) / sd(t) * (x - (1 - t)[:, None] * MU)


STEPS = 400
CFG = toynet.config(STEPS, mu_t=1.0, mu_s=-1.0, r_init=0.5, r_end=0.05)   # t near 1, s near 0, large gaps early


def network():
    return toynet.MLP(width=64, depth=3)


@in_submission
def trained_network(sub, steps=STEPS, seed=0, batch_size=256):
    """The MLP trained with L = lambda L_FM + (1 - lambda) L_SCM, where L_FM is soflow.fm_loss
    and L_SCM the submission's consistency_loss; returns its weights."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = network()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    n = soflow.fm_count(CFG, batch_size)
    for step in range(steps):
        x0 = MU + STD * torch.randn(batch_size, 2, generator=g)
        x1 = torch.randn(batch_size, 2, generator=g)
        t_fm = soflow.fm_times(CFG, n, generator=g)
        t, l, s = soflow.scm_times(CFG, batch_size - n, step, generator=g)
        x_t, v = soflow.interpolate(CFG, x0, x1, torch.cat([t_fm, t]))
        loss_fm = soflow.fm_loss(net, CFG, x_t[:n], t_fm, None, v[:n])[0]
        loss_sc = sub.consistency_loss(net, CFG, x_t[n:], t, l, s, None, v[n:])[0]
        loss = CFG.fm_ratio * loss_fm + (1 - CFG.fm_ratio) * loss_sc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return dict(net.state_dict())


def errors(state):
    """RMSE of the network's f(x_t, t, s) against the exact map over t ~ U(0.1, 1),
    s ~ U(0, t), x_t ~ p_t, and of its one-step samples f(x1, 1, 0)."""
    net = network()
    net.load_state_dict(state)
    g = torch.Generator().manual_seed(123)
    t = 0.1 + 0.9 * torch.rand(2000, generator=g)
    s = t * torch.rand(2000, generator=g)
    x = exact_map(torch.randn(2000, 2, generator=g), torch.ones(2000), t)       # x_t ~ p_t
    rmse = lambda a, b: (a - b).norm(dim=1).square().mean().sqrt().item()
    with torch.no_grad():
        err = rmse(soflow.solution(net, CFG, x, t, s), exact_map(x, t, s))
        x1 = torch.randn(2000, 2, generator=g)
        err_1nfe = rmse(soflow.sample(net, CFG, x1), exact_map(x1, torch.ones(2000), torch.zeros(2000)))
    return err, err_1nfe


@pytest.mark.points(2)
def test_training_learns_the_exact_solution_map(sub, prerequisites):
    """400 steps with the submission's loss; the trained network is evaluated here."""
    prerequisites("test_loss_value_is_eq14_with_eq15", "test_target_is_a_stop_gradient")
    err, err_1nfe = errors(sub.run(trained_network))
    # reference: about 0.06 (one-step samples about 0.3); flow matching alone: about 0.37
    assert math.isfinite(err) and err < 0.1, (
        f"after 400 steps f(x_t, t, s) is {err:.3f} (RMSE) from the exact map (one-step samples: "
        f"{err_1nfe:.3f}); the reference loss gets below 0.1, flow matching alone about 0.37")
