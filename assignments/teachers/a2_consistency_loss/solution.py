"""
Assignment 2, reference solution: the solution consistency loss (Eq. 14, 15),
written directly and in the numerically stable form of the released code.
"""

import torch

import soflow


def _bc(c, x):
    """Per-sample values (B,) -> shape (B, 1, ..., 1) to broadcast against x (B, ...)."""
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def _rng_devices(x):
    return [x.device] if x.device.type == "cuda" else []


def consistency_loss(net, cfg, x_t, t, l, s, y, v_target):
    """Eq. 14 with the weight of Eq. 15, averaged over the batch.
    Returns (loss, per-sample MSE between f(x_t, t, s) and the target, detached)."""
    x_l = x_t + _bc(l - t, x_t) * v_target                  # one Euler step from t down to l
    with torch.random.fork_rng(devices=_rng_devices(x_t)):  # restores the RNG state on exit, so ...
        f_t = soflow.solution(net, cfg, x_t, t, s, y)
    with torch.no_grad():                                   # ... the target pass draws the same dropout
        f_l = soflow.solution(net, cfg, x_l, l, s, y)       # the stop-gradient target f_theta-
    mse = (f_t - f_l).square().flatten(1).mean(1)
    _, b = soflow.coefficients(cfg.param, t, s)
    dt = t - l
    weight = 1 / (dt * b.abs()) / (mse.detach() / dt.square() + cfg.eps) ** cfg.p   # Eq. 15, a constant
    return (weight * mse).mean(), mse.detach()


def consistency_loss_stable(net, cfg, x_t, t, l, s, y, v_target):
    """sign(b) * mean(F(x_t, t, s) * q * w) with q = sg[(f_t - f_l) / (t - l)] and
    w = sg[1 / (mean(q^2) + eps)^p], averaged over the batch: its gradient is half
    the gradient of consistency_loss, and it never squares a tiny difference."""
    x_l = x_t + _bc(l - t, x_t) * v_target
    with torch.random.fork_rng(devices=_rng_devices(x_t)):
        F = net(x_t, t, s, y)
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_l, l, s, y)
    a, b = soflow.coefficients(cfg.param, t, s)
    f_t = _bc(a, x_t) * x_t + _bc(b, x_t) * F.detach()
    q = (f_t - f_l) / _bc(t - l, x_t)
    w = 1 / (q.square().flatten(1).mean(1) + cfg.eps) ** cfg.p
    return (_bc(torch.sign(b) * w, F) * F * q).flatten(1).mean(1).mean()
