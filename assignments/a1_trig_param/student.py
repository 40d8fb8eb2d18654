"""
Assignment 1: the trigonometric noising schedule and the trigonometric
parameterization of the solution function. Read README.md first.

    x_t = cos(pi t / 2) x0 + sin(pi t / 2) x1                      (Sec. 3)
    f(x, t, s) = a(t, s) x + b(t, s) F(x, t, s)                    (Sec. 4.2)
    a(t, s) = cos(pi (s - t) / 2),  b(t, s) = sin(pi (s - t) / 2)

Fill in every function marked TODO(student). Times t, s are tensors of shape (B,);
x has shape (B, ...); net is called as net(x, t, s, y). Keep the dtype of the inputs.
Check yourself with:  python -m pytest -q assignments/a1_trig_param/grader.py
"""

import math

import torch


def _bc(c, x):
    """Per-sample coefficients (B,) -> shape (B, 1, ..., 1) to broadcast against x (B, ...)."""
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def trig_schedule(t):
    """(alpha(t), beta(t), alpha'(t), beta'(t)) of x_t = cos(pi t / 2) x0 + sin(pi t / 2) x1,
    where ' is d/dt."""
    # TODO(student): the two coefficients and their derivatives in t.
    raise NotImplementedError("trig_schedule")


def trig_coefficients(t, s):
    """(a(t, s), b(t, s)) of the trigonometric parameterization."""
    # TODO(student): a and b. Check on paper that a(t, t) = 1 and b(t, t) = 0.
    raise NotImplementedError("trig_coefficients")


def trig_partial_derivatives(t, s):
    """(da/ds, db/ds, da/dt, db/dt) at (t, s), as tensors of the shape of t."""
    # TODO(student): derive the four partial derivatives by hand (mind the chain rule).
    raise NotImplementedError("trig_partial_derivatives")


def trig_velocity_coefficients():
    """(da/ds, db/ds) at s = t, as two Python numbers: the coefficients of the
    velocity head v = da/ds x + db/ds F(x, t, t) (Eq. 10)."""
    # TODO(student): evaluate your derivatives at s = t.
    raise NotImplementedError("trig_velocity_coefficients")


def solution(net, x, t, s, y=None):
    """The model's solution function f(x, t, s) = a(t, s) x + b(t, s) F(x, t, s, y)."""
    # TODO(student): one network call; use _bc to broadcast a and b.
    raise NotImplementedError("solution")


def velocity(net, x, t, y=None):
    """The model's velocity v(x, t) = d/ds f(x, t, s) at s = t (Eq. 10), with one
    plain network call F(x, t, t, y) and no autograd."""
    # TODO(student): why does the term b(t, t) dF/ds drop out?
    raise NotImplementedError("velocity")
