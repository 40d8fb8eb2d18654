"""
Assignment 2: the solution consistency loss (Eq. 14, 15). Read README.md first.

For s < l < t, with x_l = x_t + v_target * (l - t) (one Euler step down the
trajectory) and the network's solution function f(x, t, s) = a x + b F:

    L_SCM = mean over the batch of  w_SCM * mean_D( (f(x_t, t, s) - sg f(x_l, l, s))^2 )     (Eq. 14)
    w_SCM = sg( 1 / ((t - l) |b(t, s)|) * 1 / (MSE / (t - l)^2 + eps)^p )                   (Eq. 15)

sg = stop-gradient. No Jacobian-vector product: the target is a second forward pass.
You may use soflow.solution and soflow.coefficients (assignment 1 is about those).
Check yourself with:  python -m pytest -q assignments/a2_consistency_loss/grader.py
"""

import torch

import soflow


def _bc(c, x):
    """Per-sample values (B,) -> shape (B, 1, ..., 1) to broadcast against x (B, ...)."""
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def consistency_loss(net, cfg, x_t, t, l, s, y, v_target):
    """Eq. 14 with the weight of Eq. 15, averaged over the batch.

    net: F(x, t, s, y); cfg: a soflow.SoFlowConfig (cfg.param, cfg.p, cfg.eps);
    x_t (B, ...); t, l, s (B,) with s < l < t; y (B,) labels or None; v_target like x_t.
    Returns (loss, mse): the scalar loss and the per-sample MSE (B,), detached.
    Both network passes must see the same dropout masks (see README.md).
    """
    # TODO(student): x_l, the two passes (which one gets gradients?), the MSE, the weight.
    raise NotImplementedError("consistency_loss")


def consistency_loss_stable(net, cfg, x_t, t, l, s, y, v_target):
    """The released code's form of the same loss, averaged over the batch:
    sign(b(t, s)) * mean_D( F(x_t, t, s) * q * w ) with
    q = sg[ (f(x_t, t, s) - f(x_l, l, s)) / (t - l) ] and w = sg[ 1 / (mean_D(q^2) + eps)^p ].
    Its gradient must be half the gradient of consistency_loss. Returns the scalar loss."""
    # TODO(student): only F(x_t, t, s) carries gradients here.
    raise NotImplementedError("consistency_loss_stable")
