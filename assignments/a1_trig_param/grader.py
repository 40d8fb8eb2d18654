"""
Grader of assignment 1 (the trigonometric schedule and parameterization).

    python -m pytest -q assignments/a1_trig_param/grader.py                       # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a1_trig_param/grader.py

Every check is independent of how the submission is written: values against
math.cos / math.sin, derivatives against autograd, Eq. 10 against autograd through
the submission's own solution function, and the results against soflow.py.
"""

import math

import pytest
import torch
import torch.nn as nn

import soflow

H = math.pi / 2
TRIG = soflow.SoFlowConfig(schedule="trig", param="trig", num_classes=3)


class SmoothNet(nn.Module):
    """A small random network F(x, t, s, y) on vectors or images (any shape (B, ...))."""

    def __init__(self, dim, num_classes=3, width=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(dim + 2, width)
        self.emb = nn.Embedding(num_classes + 1, width)
        self.out = nn.Linear(width, dim)
        self.null = num_classes

    def forward(self, x, t, s, y=None):
        if y is None:
            y = torch.full((x.shape[0],), self.null, device=x.device)
        h = torch.tanh(self.inp(torch.cat([x.flatten(1), t[:, None], s[:, None]], 1)) + self.emb(y))
        return self.out(h).reshape(x.shape)


def times(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    s = t * torch.rand(n, generator=g, dtype=torch.float64)
    return t, s


def close(a, b, tol=1e-10):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               atol=tol, rtol=tol)

# ------------------------------------------------------------------ the schedule

@pytest.mark.points(1)
def test_schedule_values_and_endpoints(sub):
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    alpha, beta, _, _ = sub.trig_schedule(t)
    assert alpha.dtype == torch.float64 and alpha.shape == t.shape
    close(alpha, [math.cos(math.pi * u / 2) for u in t.tolist()])
    close(beta, [math.sin(math.pi * u / 2) for u in t.tolist()])
    close(alpha[[0, -1]], [1.0, 0.0], 1e-15)               # data at t = 0, noise at t = 1
    close(beta[[0, -1]], [0.0, 1.0], 1e-15)


@pytest.mark.points(2)
def test_schedule_derivatives_match_autograd(sub):
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64, requires_grad=True)
    alpha = torch.cos(H * t)                               # the true coefficients, differentiated by autograd
    beta = torch.sin(H * t)
    d_alpha, = torch.autograd.grad(alpha.sum(), t)
    d_beta, = torch.autograd.grad(beta.sum(), t)
    _, _, da, db = sub.trig_schedule(t.detach())
    close(da, d_alpha)
    close(db, d_beta)

# ------------------------------------------------------------------ the parameterization

@pytest.mark.points(2)
def test_coefficient_values(sub):
    t, s = times()
    a, b = sub.trig_coefficients(t, s)
    close(a, [math.cos(math.pi * (v - u) / 2) for u, v in zip(t.tolist(), s.tolist())])
    close(b, [math.sin(math.pi * (v - u) / 2) for u, v in zip(t.tolist(), s.tolist())])
    a, b = sub.trig_coefficients(torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    close(a, [0.0], 1e-15)                                 # one step from noise to data: f = -F
    close(b, [-1.0], 1e-15)


@pytest.mark.points(1)
def test_boundary_condition_is_exact(sub):
    t, _ = times(64, seed=1)
    a, b = sub.trig_coefficients(t, t)
    assert torch.equal(a, torch.ones_like(t)) and torch.equal(b, torch.zeros_like(t)), "a(t, t) = 1, b(t, t) = 0"
    net = SmoothNet(3).double()
    x = torch.randn(64, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (64,))
    assert torch.equal(sub.solution(net, x, t, t, y), x), "f(x, t, t) = x must hold exactly (Eq. 6)"


@pytest.mark.points(2)
def test_partial_derivatives_match_autograd(sub):
    t, s = times(40, seed=2)
    t.requires_grad_(True)
    s.requires_grad_(True)
    a, b = torch.cos(H * (s - t)), torch.sin(H * (s - t))  # the true coefficients
    da_ds, da_dt = torch.autograd.grad(a.sum(), (s, t))
    db_ds, db_dt = torch.autograd.grad(b.sum(), (s, t))
    got = sub.trig_partial_derivatives(t.detach(), s.detach())
    for name, g, ref in zip(("da/ds", "db/ds", "da/dt", "db/dt"), got, (da_ds, db_ds, da_dt, db_dt)):
        try:
            close(g, ref)
        except AssertionError as e:
            raise AssertionError(f"{name} is wrong: {e}") from None


@pytest.mark.points(1)
def test_velocity_coefficients_are_the_s_derivatives_at_s_equals_t(sub):
    t, _ = times(8, seed=3)
    s = t.clone().requires_grad_(True)
    da, = torch.autograd.grad(torch.cos(H * (s - t)).sum(), s)
    db, = torch.autograd.grad(torch.sin(H * (s - t)).sum(), s)
    got_a, got_b = sub.trig_velocity_coefficients()
    close(torch.full_like(t, float(got_a)), da)
    close(torch.full_like(t, float(got_b)), db)

# ------------------------------------------------------------------ Eq. 10 and soflow.py

@pytest.mark.points(2)
def test_velocity_is_the_s_derivative_of_the_solution(sub):
    """Eq. 10 on the submission's own functions: autograd through f(x, t, s) in s,
    F's dependence on s included, must give the velocity head at s = t."""
    net = SmoothNet(2, seed=4).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    t, _ = times(16, seed=4)
    y = torch.randint(0, 4, (16,))
    s = t.clone().requires_grad_(True)
    f = sub.solution(net, x, t, s, y)
    dfds = torch.stack([torch.autograd.grad(f[:, k].sum(), s, retain_graph=True)[0] for k in range(2)], 1)
    close(sub.velocity(net, x, t, y), dfds)


@pytest.mark.points(2)
def test_velocity_and_solution_match_soflow(sub):
    """On image-shaped inputs (B, C, H, W): the solution and velocity of soflow.py with
    param='trig', and the schedule of soflow.py with schedule='trig'."""
    net = SmoothNet(3 * 4 * 4, seed=5).double()
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t, s = times(6, seed=5)
    y = torch.randint(0, 4, (6,))
    f = sub.solution(net, x, t, s, y)
    assert f.shape == x.shape and f.dtype == torch.float64
    close(f, soflow.solution(net, TRIG, x, t, s, y))
    close(sub.velocity(net, x, t, y), soflow.velocity(net, TRIG, x, t, y))
    for got, ref in zip(sub.trig_schedule(t), soflow.schedule("trig", t)):
        close(got, ref)
