"""
Grader of assignment 1 (the trigonometric schedule and parameterization).

    python -m pytest -q assignments/a1_trig_param/grader.py                       # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a1_trig_param/grader.py

Every check is independent of how the submission is written: values against
math.cos / math.sin, derivatives against autograd, Eq. 10 against autograd through
the submission's own solution function, and the results against soflow.py. The
functions marked @in_submission run in the submission's process and only return
values; the tests check them here (see runner.py).
"""

import math

import pytest
import torch
import torch.nn as nn

import soflow
from checks import close
from runner import in_submission

FUNCTIONS = ("trig_schedule", "trig_coefficients", "trig_partial_derivatives", "trig_velocity_coefficients",
             "solution", "velocity")
H = math.pi / 2
TRIG = soflow.SoFlowConfig(schedule="trig", param="trig", num_classes=3)


class SmoothNet(nn.Module):
    """A small random network F(x, t, s, y) on vectors or images (any shape (B, ...));
    the same seed gives the same network in both processes."""

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


def inputs(dim, n, seed):
    """A network, points x of shape (n, *dim), times t, s and labels y, the same in both processes."""
    net = SmoothNet(math.prod(dim), seed=seed).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *dim, generator=g, dtype=torch.float64)
    t, s = times(n, seed)
    return net, x, t, s, torch.randint(0, 4, (n,), generator=g)

# ------------------------------------------------------------------ the schedule

@in_submission
def schedule_at(s, t):
    return s.trig_schedule(torch.tensor(t, dtype=torch.float64))


@pytest.mark.points(1)
def test_schedule_values_and_endpoints(sub):
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    alpha, beta, _, _ = sub.run(schedule_at, t.tolist())
    assert alpha.dtype == torch.float64 and alpha.shape == t.shape, f"alpha: {alpha.dtype} {tuple(alpha.shape)}"
    close(alpha, [math.cos(math.pi * u / 2) for u in t.tolist()], "alpha(t)")
    close(beta, [math.sin(math.pi * u / 2) for u in t.tolist()], "beta(t)")
    close(alpha[[0, -1]], [1.0, 0.0], "alpha at t = 0 and t = 1 (data at 0, noise at 1)", 1e-15)
    close(beta[[0, -1]], [0.0, 1.0], "beta at t = 0 and t = 1", 1e-15)


@pytest.mark.points(2)
def test_schedule_derivatives_match_autograd(sub):
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64, requires_grad=True)
    d_alpha, = torch.autograd.grad(torch.cos(H * t).sum(), t)   # the true coefficients, differentiated
    d_beta, = torch.autograd.grad(torch.sin(H * t).sum(), t)
    _, _, da, db = sub.run(schedule_at, t.tolist())
    close(da, d_alpha, "alpha'(t)")
    close(db, d_beta, "beta'(t)")

# ------------------------------------------------------------------ the parameterization

@in_submission
def coefficients_at(s, t, u):
    return s.trig_coefficients(torch.tensor(t, dtype=torch.float64), torch.tensor(u, dtype=torch.float64))


@pytest.mark.points(2)
def test_coefficient_values(sub):
    t, s = times()
    a, b = sub.run(coefficients_at, t.tolist(), s.tolist())
    close(a, [math.cos(math.pi * (v - u) / 2) for u, v in zip(t.tolist(), s.tolist())], "a(t, s)")
    close(b, [math.sin(math.pi * (v - u) / 2) for u, v in zip(t.tolist(), s.tolist())], "b(t, s)")
    a, b = sub.run(coefficients_at, [1.0], [0.0])
    close(a, [0.0], "a(1, 0) (one step from noise to data: f = -F)", 1e-15)
    close(b, [-1.0], "b(1, 0)", 1e-15)


@in_submission
def boundary(s):
    net, x, t, _, y = inputs((3,), 64, seed=1)
    a, b = s.trig_coefficients(t, t)
    return a, b, s.solution(net, x, t, t, y), x


@pytest.mark.points(1)
def test_boundary_condition(sub):
    """a(t, t) = 1, b(t, t) = 0 and f(x, t, t) = x (Eq. 6), up to round-off: cos cos + sin sin
    is as right as cos(0), though it gives 1 - 2.2e-16."""
    a, b, f, x = sub.run(boundary)
    close(a, torch.ones_like(a), "a(t, t), which must be 1,", 1e-13)
    close(b, torch.zeros_like(b), "b(t, t), which must be 0,", 1e-13)
    close(f, x, "f(x, t, t), which must be x (Eq. 6),", 1e-13, 1e-13)


@in_submission
def partial_derivatives_at(s, t, u):
    return s.trig_partial_derivatives(torch.tensor(t, dtype=torch.float64), torch.tensor(u, dtype=torch.float64))


@pytest.mark.points(2)
def test_partial_derivatives_match_autograd(sub):
    t, s = times(40, seed=2)
    got = sub.run(partial_derivatives_at, t.tolist(), s.tolist())
    t.requires_grad_(True)
    s.requires_grad_(True)
    a, b = torch.cos(H * (s - t)), torch.sin(H * (s - t))   # the true coefficients
    da_ds, da_dt = torch.autograd.grad(a.sum(), (s, t))
    db_ds, db_dt = torch.autograd.grad(b.sum(), (s, t))
    assert len(got) == 4, f"expected (da/ds, db/ds, da/dt, db/dt), got {len(got)} values"
    for name, g, ref in zip(("da/ds", "db/ds", "da/dt", "db/dt"), got, (da_ds, db_ds, da_dt, db_dt)):
        close(g, ref, name)


@in_submission
def velocity_coefficients(s):
    return tuple(float(c) for c in s.trig_velocity_coefficients())


@pytest.mark.points(1)
def test_velocity_coefficients_are_the_s_derivatives_at_s_equals_t(sub):
    t, _ = times(8, seed=3)
    s = t.clone().requires_grad_(True)
    da, = torch.autograd.grad(torch.cos(H * (s - t)).sum(), s)
    db, = torch.autograd.grad(torch.sin(H * (s - t)).sum(), s)
    got_a, got_b = sub.run(velocity_coefficients)
    close(got_a, da[0], "da/ds at s = t")
    close(got_b, db[0], "db/ds at s = t")

# ------------------------------------------------------------------ Eq. 10 and soflow.py

@in_submission
def velocity_and_autograd(s):
    """The velocity head and autograd through the submission's f(x, t, s) in s at s = t."""
    net, x, t, _, y = inputs((2,), 16, seed=4)
    u = t.clone().requires_grad_(True)
    f = s.solution(net, x, t, u, y)
    dfds = torch.stack([torch.autograd.grad(f[:, k].sum(), u, retain_graph=True)[0] for k in range(2)], 1)
    return s.velocity(net, x, t, y), dfds


@pytest.mark.points(2)
def test_velocity_is_the_s_derivative_of_the_solution(sub):
    """Eq. 10 on the submission's own functions: autograd through f(x, t, s) in s, F's
    dependence on s included, must give the velocity head at s = t."""
    v, dfds = sub.run(velocity_and_autograd)
    close(v, dfds, "velocity(x, t) against d/ds solution(x, t, s) at s = t (autograd)")


@in_submission
def on_images(s):
    net, x, t, u, y = inputs((3, 4, 4), 6, seed=5)
    return s.solution(net, x, t, u, y), s.velocity(net, x, t, y), s.trig_schedule(t)


@pytest.mark.points(2)
def test_velocity_and_solution_match_soflow(sub):
    """On image-shaped inputs (B, C, H, W): the solution and velocity of soflow.py with
    param='trig', and the schedule of soflow.py with schedule='trig'."""
    f, v, schedule = sub.run(on_images)
    net, x, t, s, y = inputs((3, 4, 4), 6, seed=5)
    assert f.shape == x.shape and f.dtype == torch.float64, f"f: {f.dtype} {tuple(f.shape)}, expected float64 {tuple(x.shape)}"
    with torch.no_grad():
        close(f, soflow.solution(net, TRIG, x, t, s, y), "f(x, t, s) against soflow.solution")
        close(v, soflow.velocity(net, TRIG, x, t, y), "v(x, t) against soflow.velocity")
    for name, got, ref in zip(("alpha", "beta", "alpha'", "beta'"), schedule, soflow.schedule("trig", t)):
        close(got, ref, f"{name} against soflow.schedule")

# all tests pass
