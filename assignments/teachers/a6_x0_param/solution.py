"""
Assignment 6, reference solution: the DDIM (data-prediction) parameterization of the
solution function, for any noising schedule x_t = alpha(t) x0 + beta(t) x1.

A network F that predicts the data x0 from x_t implies a noise estimate
(x_t - alpha(t) F) / beta(t); moving both to time s is one DDIM step:

    f(x, t, s) = beta(s) / beta(t) x + (alpha(s) - alpha(t) beta(s) / beta(t)) F(x, t, s).
"""

import soflow


def _bc(c, x):
    """Per-sample coefficients (B,) -> shape (B, 1, ..., 1) to broadcast against x (B, ...)."""
    return c.reshape(-1, *([1] * (x.ndim - 1)))


def ddim_coefficients(schedule, t, s):
    """(a(t, s), b(t, s)) = (beta(s) / beta(t), alpha(s) - alpha(t) beta(s) / beta(t))."""
    alpha_t, beta_t, _, _ = soflow.schedule(schedule, t)
    alpha_s, beta_s, _, _ = soflow.schedule(schedule, s)
    ratio = beta_s / beta_t                   # exactly 1 at s = t, so a(t, t) = 1 and b(t, t) = 0 exactly
    return ratio, alpha_s - alpha_t * ratio


def ddim_partial_derivatives(schedule, t, s):
    """(da/ds, db/ds, da/dt, db/dt). a and b depend on t and s separately, not on s - t
    only: the t-derivatives are not minus the s-derivatives."""
    alpha_t, beta_t, d_alpha_t, d_beta_t = soflow.schedule(schedule, t)
    _, beta_s, d_alpha_s, d_beta_s = soflow.schedule(schedule, s)
    da_ds = d_beta_s / beta_t
    da_dt = -beta_s * d_beta_t / beta_t**2
    db_ds = d_alpha_s - alpha_t * da_ds
    db_dt = -d_alpha_t * beta_s / beta_t - alpha_t * da_dt
    return da_ds, db_ds, da_dt, db_dt


def ddim_velocity_coefficients(schedule, t):
    """(da/ds, db/ds) at s = t: (beta'/beta, alpha' - alpha beta'/beta), functions of t."""
    alpha, beta, d_alpha, d_beta = soflow.schedule(schedule, t)
    return d_beta / beta, d_alpha - alpha * d_beta / beta


def solution(net, schedule, x, t, s, y=None):
    """f(x, t, s) = a(t, s) x + b(t, s) F(x, t, s, y), one network call."""
    a, b = ddim_coefficients(schedule, t, s)
    return _bc(a, x) * x + _bc(b, x) * net(x, t, s, y)


def velocity(net, schedule, x, t, y=None):
    """v(x, t) = da/ds x + db/ds F(x, t, t) (Eq. 10; b(t, t) = 0 removes dF/ds)."""
    da, db = ddim_velocity_coefficients(schedule, t)
    return _bc(da, x) * x + _bc(db, x) * net(x, t, t, y)


def denoiser_from_velocity(schedule, x, t, v):
    """E[x0 | x_t = x] from the marginal velocity v(x, t). E[x0 | x] and E[x1 | x] solve
    x = alpha E[x0] + beta E[x1] and v = alpha' E[x0] + beta' E[x1] (Eq. 1), so
    E[x0 | x] = (beta' x - beta v) / (alpha beta' - alpha' beta)."""
    alpha, beta, d_alpha, d_beta = (_bc(c, x) for c in soflow.schedule(schedule, t))
    return (d_beta * x - beta * v) / (alpha * d_beta - d_alpha * beta)
