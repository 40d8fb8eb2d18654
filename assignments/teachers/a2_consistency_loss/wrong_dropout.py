"""
A plausible mistake for assignment 2: the two forward passes run one after the other
without restoring the random-number state, so with dropout the prediction and the
target use different dropout masks and their difference is dominated by dropout
noise. Without dropout everything is right, so only the dropout check catches it.
"""

import torch

import soflow

CAUGHT_BY = ("test_both_passes_see_the_same_dropout_mask",)


def _bc(c, x):
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def consistency_loss(net, cfg, x_t, t, l, s, y, v_target):
    x_l = x_t + _bc(l - t, x_t) * v_target
    f_t = soflow.solution(net, cfg, x_t, t, s, y)           # mistake: no torch.random.fork_rng
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_l, l, s, y)
    mse = (f_t - f_l).square().flatten(1).mean(1)
    _, b = soflow.coefficients(cfg.param, t, s)
    dt = t - l
    weight = 1 / (dt * b.abs()) / (mse.detach() / dt.square() + cfg.eps) ** cfg.p
    return (weight * mse).mean(), mse.detach()


def consistency_loss_stable(net, cfg, x_t, t, l, s, y, v_target):
    x_l = x_t + _bc(l - t, x_t) * v_target
    F = net(x_t, t, s, y)
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_l, l, s, y)
    a, b = soflow.coefficients(cfg.param, t, s)
    f_t = _bc(a, x_t) * x_t + _bc(b, x_t) * F.detach()
    q = (f_t - f_l) / _bc(t - l, x_t)
    w = 1 / (q.square().flatten(1).mean(1) + cfg.eps) ** cfg.p
    return (_bc(torch.sign(b) * w, F) * F * q).flatten(1).mean(1).mean()
