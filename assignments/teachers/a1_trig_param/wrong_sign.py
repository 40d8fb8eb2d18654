"""
A plausible mistake for assignment 1: b(t, s) = sin(pi (t - s) / 2), i.e. the time
difference taken the wrong way round (t - s instead of s - t). The boundary
condition b(t, t) = 0 still holds and the student's own derivatives are consistent
with it, so only the checks against the true values and against soflow.py catch it:
the model would learn -F instead of F, and its velocity head would point backwards.
"""

import math

import torch

H = math.pi / 2
CAUGHT_BY = ("test_coefficient_values", "test_partial_derivatives_match_autograd",
             "test_velocity_coefficients_are_the_s_derivatives_at_s_equals_t",
             "test_velocity_and_solution_match_soflow")


def _bc(c, x):
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def trig_schedule(t):
    return torch.cos(H * t), torch.sin(H * t), -H * torch.sin(H * t), H * torch.cos(H * t)


def trig_coefficients(t, s):
    return torch.cos(H * (t - s)), torch.sin(H * (t - s))


def trig_partial_derivatives(t, s):
    da_ds = H * torch.sin(H * (t - s))
    db_ds = -H * torch.cos(H * (t - s))
    return da_ds, db_ds, -da_ds, -db_ds


def trig_velocity_coefficients():
    return 0.0, -H


def solution(net, x, t, s, y=None):
    a, b = trig_coefficients(t, s)
    return _bc(a, x) * x + _bc(b, x) * net(x, t, s, y)


def velocity(net, x, t, y=None):
    da, db = trig_velocity_coefficients()
    return da * x + db * net(x, t, t, y)
