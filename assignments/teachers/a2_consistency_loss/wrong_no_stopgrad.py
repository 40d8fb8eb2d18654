"""
A plausible mistake for assignment 2: the target f(x_l, l, s) computed with
gradients (no torch.no_grad / detach), so the loss pulls the target towards the
prediction as much as the prediction towards the target. The value of the loss is
right; its gradient is not, which the gradient checks catch.
"""

import torch

import soflow

CAUGHT_BY = ("test_target_is_a_stop_gradient", "test_gradient_matches_soflow",
             "test_stable_form_value_and_gradient", "test_training_learns_the_exact_solution_map")


def _bc(c, x):
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def _passes(net, cfg, x_t, t, l, s, y, v_target):
    x_l = x_t + _bc(l - t, x_t) * v_target
    with torch.random.fork_rng(devices=[]):
        F = net(x_t, t, s, y)
    f_l = soflow.solution(net, cfg, x_l, l, s, y)          # mistake: no stop-gradient
    return F, f_l


def consistency_loss(net, cfg, x_t, t, l, s, y, v_target):
    F, f_l = _passes(net, cfg, x_t, t, l, s, y, v_target)
    a, b = soflow.coefficients(cfg.param, t, s)
    f_t = _bc(a, x_t) * x_t + _bc(b, x_t) * F
    mse = (f_t - f_l).square().flatten(1).mean(1)
    dt = t - l
    weight = 1 / (dt * b.abs()) / (mse.detach() / dt.square() + cfg.eps) ** cfg.p
    return (weight * mse).mean(), mse.detach()


def consistency_loss_stable(net, cfg, x_t, t, l, s, y, v_target):
    F, f_l = _passes(net, cfg, x_t, t, l, s, y, v_target)
    a, b = soflow.coefficients(cfg.param, t, s)
    f_t = _bc(a, x_t) * x_t + _bc(b, x_t) * F.detach()
    q = (f_t - f_l) / _bc(t - l, x_t)
    w = 1 / (q.detach().square().flatten(1).mean(1) + cfg.eps) ** cfg.p
    return (_bc(torch.sign(b) * w, F) * F * q).flatten(1).mean(1).mean()
