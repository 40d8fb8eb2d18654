"""
A plausible mistake for assignment 2: the adaptive factor 1 / (MSE / (t - l)^2 + eps)^p
of Eq. 15 computed from the MSE *with* its gradient. For p = 0 nothing changes;
for p > 0 the gradient is no longer w * grad(MSE) (for p = 1 and eps -> 0 it all
but vanishes, since w * MSE is then nearly constant). The stable form, written
correctly here, passes.
"""

import torch

import soflow

CAUGHT_BY = ("test_gradient_matches_soflow",)


def _bc(c, x):
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def consistency_loss(net, cfg, x_t, t, l, s, y, v_target):
    x_l = x_t + _bc(l - t, x_t) * v_target
    with torch.random.fork_rng(devices=[]):
        f_t = soflow.solution(net, cfg, x_t, t, s, y)
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_l, l, s, y)
    mse = (f_t - f_l).square().flatten(1).mean(1)
    _, b = soflow.coefficients(cfg.param, t, s)
    dt = t - l
    weight = 1 / (dt * b.abs()) / (mse / dt.square() + cfg.eps) ** cfg.p   # mistake: mse not detached
    return (weight * mse).mean(), mse.detach()


def consistency_loss_stable(net, cfg, x_t, t, l, s, y, v_target):
    x_l = x_t + _bc(l - t, x_t) * v_target
    with torch.random.fork_rng(devices=[]):
        F = net(x_t, t, s, y)
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_l, l, s, y)
    a, b = soflow.coefficients(cfg.param, t, s)
    f_t = _bc(a, x_t) * x_t + _bc(b, x_t) * F.detach()
    q = (f_t - f_l) / _bc(t - l, x_t)
    w = 1 / (q.square().flatten(1).mean(1) + cfg.eps) ** cfg.p
    return (_bc(torch.sign(b) * w, F) * F * q).flatten(1).mean(1).mean()
