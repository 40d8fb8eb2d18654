"""
A plausible mistake for assignment 1: the chain-rule factor pi/2 forgotten in every
derivative (d/ds sin(pi (s - t) / 2) written as cos(pi (s - t) / 2)). The values
of a, b, alpha and beta are right, so the boundary condition and the solution
function pass; the derivatives, the velocity head and Eq. 10 do not.
"""

import math

import torch

H = math.pi / 2
CAUGHT_BY = ("test_schedule_derivatives_match_autograd", "test_partial_derivatives_match_autograd",
             "test_velocity_coefficients_are_the_s_derivatives_at_s_equals_t",
             "test_velocity_is_the_s_derivative_of_the_solution", "test_velocity_and_solution_match_soflow")


def _bc(c, x):
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def trig_schedule(t):
    return torch.cos(H * t), torch.sin(H * t), -torch.sin(H * t), torch.cos(H * t)


def trig_coefficients(t, s):
    return torch.cos(H * (s - t)), torch.sin(H * (s - t))


def trig_partial_derivatives(t, s):
    da_ds = -torch.sin(H * (s - t))
    db_ds = torch.cos(H * (s - t))
    return da_ds, db_ds, -da_ds, -db_ds


def trig_velocity_coefficients():
    return 0.0, 1.0


def solution(net, x, t, s, y=None):
    a, b = trig_coefficients(t, s)
    return _bc(a, x) * x + _bc(b, x) * net(x, t, s, y)


def velocity(net, x, t, y=None):
    da, db = trig_velocity_coefficients()
    return da * x + db * net(x, t, t, y)
