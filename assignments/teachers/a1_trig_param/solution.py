"""
Assignment 1, reference solution: the trigonometric noising schedule and the
trigonometric parameterization of the solution function.

    x_t = cos(pi t / 2) x0 + sin(pi t / 2) x1                      (Sec. 3)
    f(x, t, s) = cos(pi (s - t) / 2) x + sin(pi (s - t) / 2) F(x, t, s)   (Sec. 4.2)
"""

import math

import torch

H = math.pi / 2     # the chain-rule factor of every derivative below


def _bc(c, x):
    """Per-sample coefficients (B,) -> shape (B, 1, ..., 1) to broadcast against x (B, ...)."""
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def trig_schedule(t):
    """(alpha(t), beta(t), alpha'(t), beta'(t)) of the trigonometric schedule."""
    return torch.cos(H * t), torch.sin(H * t), -H * torch.sin(H * t), H * torch.cos(H * t)


def trig_coefficients(t, s):
    """(a(t, s), b(t, s)): a = cos(pi (s - t) / 2), b = sin(pi (s - t) / 2)."""
    return torch.cos(H * (s - t)), torch.sin(H * (s - t))


def trig_partial_derivatives(t, s):
    """(da/ds, db/ds, da/dt, db/dt) at (t, s). Both coefficients depend on s - t
    only, so each t-derivative is minus the s-derivative."""
    da_ds = -H * torch.sin(H * (s - t))
    db_ds = H * torch.cos(H * (s - t))
    return da_ds, db_ds, -da_ds, -db_ds


def trig_velocity_coefficients():
    """(da/ds, db/ds) at s = t, as numbers: sin(0) = 0 and cos(0) = 1 leave (0, pi/2)."""
    return 0.0, H


def solution(net, x, t, s, y=None):
    """f(x, t, s) = a(t, s) x + b(t, s) F(x, t, s, y)."""
    a, b = trig_coefficients(t, s)
    return _bc(a, x) * x + _bc(b, x) * net(x, t, s, y)


def velocity(net, x, t, y=None):
    """v(x, t) = d/ds f(x, t, s) at s = t (Eq. 10): da/ds x + db/ds F(x, t, t) + b(t, t) dF/ds,
    and the last term is zero because b(t, t) = 0."""
    da, db = trig_velocity_coefficients()
    return da * x + db * net(x, t, t, y)
