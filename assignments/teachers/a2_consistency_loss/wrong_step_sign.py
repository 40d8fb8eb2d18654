"""
A plausible mistake for assignment 2: the Euler step to x_l taken with the wrong
sign, x_l = x_t + v (t - l): a step back towards the noise instead of down the
trajectory towards the data. Every check of the value, the gradient and the
training run fails; the dropout check, which only compares masks, passes.
"""

import torch

import soflow

CAUGHT_BY = ("test_loss_value_is_eq14_with_eq15", "test_target_is_a_stop_gradient",
             "test_gradient_matches_soflow", "test_stable_form_value_and_gradient",
             "test_training_learns_the_exact_solution_map")


def _bc(c, x):
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def _x_l(x_t, t, l, v_target):
    return x_t + _bc(t - l, x_t) * v_target                # mistake: should be (l - t)


def consistency_loss(net, cfg, x_t, t, l, s, y, v_target):
    x_l = _x_l(x_t, t, l, v_target)
    with torch.random.fork_rng(devices=[]):
        f_t = soflow.solution(net, cfg, x_t, t, s, y)
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_l, l, s, y)
    mse = (f_t - f_l).square().flatten(1).mean(1)
    _, b = soflow.coefficients(cfg.param, t, s)
    dt = t - l
    weight = 1 / (dt * b.abs()) / (mse.detach() / dt.square() + cfg.eps) ** cfg.p
    return (weight * mse).mean(), mse.detach()


def consistency_loss_stable(net, cfg, x_t, t, l, s, y, v_target):
    x_l = _x_l(x_t, t, l, v_target)
    with torch.random.fork_rng(devices=[]):
        F = net(x_t, t, s, y)
    with torch.no_grad():
        f_l = soflow.solution(net, cfg, x_l, l, s, y)
    a, b = soflow.coefficients(cfg.param, t, s)
    f_t = _bc(a, x_t) * x_t + _bc(b, x_t) * F.detach()
    q = (f_t - f_l) / _bc(t - l, x_t)
    w = 1 / (q.square().flatten(1).mean(1) + cfg.eps) ** cfg.p
    return (_bc(torch.sign(b) * w, F) * F * q).flatten(1).mean(1).mean()
