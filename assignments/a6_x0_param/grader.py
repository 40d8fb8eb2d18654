"""
Grader of assignment 6 (the DDIM, data-prediction, parameterization of f).

    python -m pytest -q assignments/a6_x0_param/grader.py                         # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a6_x0_param/grader.py

Every check is independent of how the submission is written: the coefficients
against the DDIM step written out here, the derivatives against autograd, Eq. 10
against autograd through the submission's own solution function, and the velocity
head of the exact denoiser of toy2d's Gaussian mixture (Gaussian conditioning,
written out here) against the mixture's marginal velocity (toy2d.py). The functions
marked @in_submission run in the submission's process and only return values; the
tests check them here (see runner.py).
"""

import math

import pytest
import torch
import torch.nn as nn

import toy2d
from checks import close
from runner import in_submission

FUNCTIONS = ("ddim_coefficients", "ddim_partial_derivatives", "ddim_velocity_coefficients", "solution",
             "velocity", "denoiser_from_velocity")
SCHEDULES = ("linear", "trig")
H = math.pi / 2


def alpha_beta(schedule, t):
    """alpha(t), beta(t) of x_t = alpha x0 + beta x1, written out (not soflow's)."""
    return (1 - t, t) if schedule == "linear" else (torch.cos(H * t), torch.sin(H * t))


def ddim(schedule, t, s):
    """The true (a, b): f = alpha(s) F + beta(s) (x - alpha(t) F) / beta(t), the DDIM step."""
    alpha_t, beta_t = alpha_beta(schedule, t)
    alpha_s, beta_s = alpha_beta(schedule, s)
    return beta_s / beta_t, alpha_s - alpha_t * beta_s / beta_t


def times(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.96 + 0.02
    s = t * torch.rand(n, generator=g, dtype=torch.float64)
    return t, s


class SmoothNet(nn.Module):
    """A small random network F(x, t, s, y) on 2-D points (the same seed, the same network)."""

    def __init__(self, width=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(4, width)
        self.out = nn.Linear(width, 2)

    def forward(self, x, t, s, y=None):
        return self.out(torch.tanh(self.inp(torch.cat([x, t[:, None], s[:, None]], 1))))


def points(n, seed):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

# ------------------------------------------------------------------ the coefficients

@in_submission
def coefficients(sub, schedule, t, s):
    return sub.ddim_coefficients(schedule, torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_coefficient_values(sub, schedule):
    t, s = times()
    a, b = sub.run(coefficients, schedule, t.tolist(), s.tolist())
    ref_a, ref_b = ddim(schedule, t, s)
    close(a, ref_a, f"{schedule}: a(t, s)", 1e-12)
    close(b, ref_b, f"{schedule}: b(t, s)", 1e-12)
    a, b = sub.run(coefficients, schedule, [1.0], [0.0])
    close(a, [0.0], f"{schedule}: a(1, 0) (one step from noise: f = F, the data prediction)", 1e-12)
    close(b, [1.0], f"{schedule}: b(1, 0)", 1e-12)


@in_submission
def boundary(sub, schedule):
    t, _ = times(64, seed=1)
    net, x = SmoothNet(seed=1).double(), points(64, 1)
    a, b = sub.ddim_coefficients(schedule, t, t)
    return a, b, sub.solution(net, schedule, x, t, t)


@pytest.mark.points(1)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_boundary_condition(sub, schedule):
    """a(t, t) = 1, b(t, t) = 0 and f(x, t, t) = x (Eq. 6), up to round-off."""
    a, b, f = sub.run(boundary, schedule)
    close(a, torch.ones(64), f"{schedule}: a(t, t), which must be 1,", 1e-13)
    close(b, torch.zeros(64), f"{schedule}: b(t, t), which must be 0,", 1e-13)
    close(f, points(64, 1), f"{schedule}: f(x, t, t), which must be x (Eq. 6),", 1e-13, 1e-13)


@in_submission
def partial_derivatives(sub, schedule, t, s):
    return sub.ddim_partial_derivatives(schedule, torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))


@pytest.mark.points(3)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_partial_derivatives_match_autograd(sub, schedule):
    t, s = times(40, seed=2)
    got = sub.run(partial_derivatives, schedule, t.tolist(), s.tolist())
    assert len(got) == 4, f"expected (da/ds, db/ds, da/dt, db/dt), got {len(got)} values"
    t.requires_grad_(True)
    s.requires_grad_(True)
    a, b = ddim(schedule, t, s)
    da_ds, da_dt = torch.autograd.grad(a.sum(), (s, t), retain_graph=True)
    db_ds, db_dt = torch.autograd.grad(b.sum(), (s, t))
    for name, g, ref in zip(("da/ds", "db/ds", "da/dt", "db/dt"), got, (da_ds, db_ds, da_dt, db_dt)):
        close(g, ref, f"{schedule}: {name}", 1e-10, 1e-10)


@in_submission
def velocity_coefficients(sub, schedule, t):
    return sub.ddim_velocity_coefficients(schedule, torch.tensor(t, dtype=torch.float64))


@pytest.mark.points(1)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_velocity_coefficients_are_the_s_derivatives_at_s_equals_t(sub, schedule):
    t, _ = times(16, seed=3)
    got_a, got_b = sub.run(velocity_coefficients, schedule, t.tolist())
    s = t.clone().requires_grad_(True)
    a, b = ddim(schedule, t, s)
    close(got_a, torch.autograd.grad(a.sum(), s, retain_graph=True)[0], f"{schedule}: da/ds at s = t", 1e-10, 1e-10)
    close(got_b, torch.autograd.grad(b.sum(), s)[0], f"{schedule}: db/ds at s = t", 1e-10, 1e-10)

# ------------------------------------------------------------------ Eq. 10

@in_submission
def velocity_and_autograd(sub, schedule):
    """The velocity head and autograd through the submission's f(x, t, s) in s at s = t."""
    net, x = SmoothNet(seed=4).double(), points(16, 4)
    t, _ = times(16, seed=4)
    u = t.clone().requires_grad_(True)
    f = sub.solution(net, schedule, x, t, u)
    dfds = torch.stack([torch.autograd.grad(f[:, k].sum(), u, retain_graph=True)[0] for k in range(2)], 1)
    return sub.velocity(net, schedule, x, t), dfds


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_velocity_is_the_s_derivative_of_the_solution(sub, schedule):
    v, dfds = sub.run(velocity_and_autograd, schedule)
    close(v, dfds, f"{schedule}: velocity(x, t) against d/ds solution(x, t, s) at s = t (autograd)", 1e-10, 1e-10)

# ------------------------------------------------------------------ the exact denoiser of the mixture

TIMES = (0.1, 0.5, 0.9)


def exact_denoiser(schedule, x, t):
    """E[x0 | x_t = x] for toy2d's mixture sum_k w_k N(mu_k, sd^2 I), by Gaussian conditioning:
    p(k | x_t) from N(x_t; alpha mu_k, (alpha^2 sd^2 + beta^2) I), then
    E[x0 | x_t, k] = mu_k + alpha sd^2 / (alpha^2 sd^2 + beta^2) (x_t - alpha mu_k). t: (B,)."""
    mix = toy2d.default_mixture()
    mu, sd = torch.from_numpy(mix.means), mix.std
    alpha, beta = alpha_beta(schedule, t)
    var = (alpha**2 * sd**2 + beta**2)[:, None]
    diff = x[:, None, :] - alpha[:, None, None] * mu[None]                  # (B, K, D)
    post = torch.softmax(torch.from_numpy(mix.weights).log()[None] - diff.square().sum(-1) / (2 * var), 1)
    return torch.einsum("bk,bkd->bd", post, mu[None] + (alpha[:, None] * sd**2 / var)[..., None] * diff)


@in_submission
def denoised(sub, schedule):
    x = points(64, 5) * 1.5
    out = []
    for t in TIMES:
        v = torch.from_numpy(toy2d.default_mixture().velocity(x.numpy(), t, schedule))
        out.append(sub.denoiser_from_velocity(schedule, x, torch.full((64,), t, dtype=torch.float64), v))
    return out


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_denoiser_from_velocity(sub, schedule):
    """From toy2d's exact marginal velocity of the mixture to E[x0 | x_t], against Gaussian
    conditioning done here."""
    x = points(64, 5) * 1.5
    for t, got in zip(TIMES, sub.run(denoised, schedule)):
        close(got, exact_denoiser(schedule, x, torch.full((64,), t, dtype=torch.float64)),
              f"{schedule}: E[x0 | x_t] at t = {t}", 1e-9, 1e-9)


@in_submission
def denoiser_velocity(sub, schedule):
    x = points(64, 6) * 1.5
    net = lambda x, t, s, y=None: exact_denoiser(schedule, x, t)              # F = the exact E[x0 | x_t]
    return [sub.velocity(net, schedule, x, torch.full((64,), t, dtype=torch.float64)) for t in TIMES]


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_velocity_of_the_exact_denoiser_is_the_marginal_velocity(sub, schedule):
    """With F the exact denoiser of the mixture, the velocity head must be the mixture's
    marginal velocity (toy2d.GaussianMixture.velocity): the DDIM parameterization trained by
    flow matching (Eq. 11) learns E[x0 | x_t]."""
    x = points(64, 6) * 1.5
    for t, got in zip(TIMES, sub.run(denoiser_velocity, schedule)):
        close(got, toy2d.default_mixture().velocity(x.numpy(), t, schedule),
              f"{schedule}: the velocity head of the exact denoiser at t = {t}, against the mixture's velocity",
              1e-9, 1e-9)
