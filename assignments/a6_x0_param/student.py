"""
Assignment 6: the DDIM (data-prediction) parameterization of the solution function,
for any noising schedule x_t = alpha(t) x0 + beta(t) x1. Read README.md first.

A network F that predicts the data x0 from x_t, moved from time t to time s by one
DDIM step, gives a solution function f(x, t, s) = a(t, s) x + b(t, s) F(x, t, s):
you derive a and b, their derivatives, the velocity head (Eq. 10), and the denoiser
E[x0 | x_t] that a given velocity field implies.

Fill in every function marked TODO(student). schedule is "linear" or "trig"; use
soflow.schedule(schedule, t) for (alpha, beta, alpha', beta'). Times t, s are tensors
of shape (B,); x has shape (B, ...); net is called as net(x, t, s, y).
Check yourself with:  python -m pytest -q assignments/a6_x0_param/grader.py
"""

import torch

import soflow


def _bc(c, x):
    """Per-sample coefficients (B,) -> shape (B, 1, ..., 1) to broadcast against x (B, ...)."""
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def ddim_coefficients(schedule, t, s):
    """(a(t, s), b(t, s)) of f(x, t, s) = a x + b F, where F predicts x0 and f is the DDIM
    step from t to s: the data estimate F and the noise estimate it implies, both moved to s."""
    # TODO(student): derive a and b on paper; check a(t, t) = 1, b(t, t) = 0 and (a, b)(1, 0).
    raise NotImplementedError("ddim_coefficients")


def ddim_partial_derivatives(schedule, t, s):
    """(da/ds, db/ds, da/dt, db/dt) at (t, s), tensors of the shape of t."""
    # TODO(student): careful: unlike assignment 1, a and b are not functions of s - t alone.
    raise NotImplementedError("ddim_partial_derivatives")


def ddim_velocity_coefficients(schedule, t):
    """(da/ds, db/ds) at s = t, tensors of the shape of t: the coefficients of the velocity
    head v = da/ds x + db/ds F(x, t, t) (Eq. 10)."""
    # TODO(student): evaluate your s-derivatives at s = t.
    raise NotImplementedError("ddim_velocity_coefficients")


def solution(net, schedule, x, t, s, y=None):
    """f(x, t, s) = a(t, s) x + b(t, s) F(x, t, s, y), with one network call."""
    # TODO(student)
    raise NotImplementedError("solution")


def velocity(net, schedule, x, t, y=None):
    """v(x, t) = d/ds f(x, t, s) at s = t (Eq. 10), with one plain network call F(x, t, t, y)."""
    # TODO(student): which term of Eq. 10 drops out, and which one does not, this time?
    raise NotImplementedError("velocity")


def denoiser_from_velocity(schedule, x, t, v):
    """E[x0 | x_t = x], given the marginal velocity v = v(x, t) at the points x (Eq. 1)."""
    # TODO(student): two linear equations in E[x0 | x] and E[x1 | x].
    raise NotImplementedError("denoiser_from_velocity")
