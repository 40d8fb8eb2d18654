"""
Grader of assignment 7 (a multi-step sampler between chaining and re-noising).

    python -m pytest -q assignments/a7_partial_renoise/grader.py                  # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a7_partial_renoise/grader.py

The forward kernel is checked by what defines it (the data's share and the noise's
variance of x_t); the sampler
with the exact solution map of a single Gaussian plugged in (in closed form, for both
schedules): gamma = 0 must then be the exact chain and every gamma exact in
distribution; and gamma = 1 must be the released sampler (soflow.sample_renoise with
the same noise) on a random network. The functions marked @in_submission run
in the submission's process and only return values; the tests check them here
(see runner.py).
"""

import math

import pytest
import torch

import soflow
import toy2d
import toynet
from checks import close
from runner import in_submission

FUNCTIONS = ("forward_kernel", "sample_partial_renoise", "sweep")
SCHEDULES = ("linear", "trig")
MU, STD = torch.tensor([0.7, -0.4], dtype=torch.float64), 0.3
GRIDS = [[1.0, 0.5, 0.0], [1.0, 0.7, 0.2, 0.0], [1.0, 0.75, 0.5, 0.25, 0.0]]


def alpha_beta(schedule, t):
    """alpha(t), beta(t) of x_t = alpha x0 + beta x1, written out (not soflow's)."""
    return (1 - t, t) if schedule == "linear" else (math.cos(math.pi * t / 2), math.sin(math.pi * t / 2))


def gaussian_map(schedule):
    """The exact solution function for data N(MU, STD^2 I): x_t is Gaussian with mean alpha(t) MU
    and std sd(t) = sqrt(alpha^2 STD^2 + beta^2) per coordinate, and the ODE keeps each
    point's standardized coordinate."""
    def sd(u):
        alpha, beta = alpha_beta(schedule, u)
        return math.sqrt(alpha**2 * STD**2 + beta**2)

    def f(x, t, s):
        return alpha_beta(schedule, s)[0] * MU + sd(s) / sd(t) * (x - alpha_beta(schedule, t)[0] * MU)
    return f


def noise(n, seed):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

# ------------------------------------------------------------------ the forward kernel

PAIRS = [(0.0, 0.5), (0.2, 0.5), (0.5, 0.5), (0.1, 0.9), (0.6, 0.75), (0.0, 0.99)]


@in_submission
def kernels(sub, schedule):
    return [tuple(float(c) for c in sub.forward_kernel(schedule, u, t)) for u, t in PAIRS]


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_forward_kernel(sub, schedule):
    """x_u = alpha(u) x0 + beta(u) x1, so scale x_u + std eps = scale alpha(u) x0 + (noise of
    variance scale^2 beta(u)^2 + std^2): x_t's law needs the data's share alpha(t) and the
    noise's variance beta(t)^2."""
    for (u, t), (scale, std) in zip(PAIRS, sub.run(kernels, schedule)):
        (alpha_u, beta_u), (alpha_t, beta_t) = alpha_beta(schedule, u), alpha_beta(schedule, t)
        close(scale * alpha_u, alpha_t, f"{schedule}, u = {u}, t = {t}: the data's share scale alpha(u), "
              "which must be alpha(t),", 1e-12, 1e-12)
        close(scale**2 * beta_u**2 + std**2, beta_t**2, f"{schedule}, u = {u}, t = {t}: the noise's variance "
              "scale^2 beta(u)^2 + std^2, which must be beta(t)^2,", 1e-12, 1e-12)
        assert std >= 0, f"{schedule}, u = {u}, t = {t}: std = {std} < 0"


# ------------------------------------------------------------------ the sampler with exact maps

def spy(f, calls):
    def g(x, t, s):
        calls.append((round(float(t), 12), round(float(s), 12)))
        return f(x, t, s)
    return g


@in_submission
def calls(sub):
    found = []
    for times in GRIDS:
        for gamma in (0.0, 0.4, 1.0):
            c = []
            sub.sample_partial_renoise(spy(gaussian_map("linear"), c), torch.zeros(3, 2, dtype=torch.float64), times,
                                       gamma, generator=torch.Generator().manual_seed(0))
            found.append(c)
    return found


@pytest.mark.points(1)
def test_calls_f_once_per_step_down_to_u(sub):
    got = iter(sub.run(calls))
    for times in GRIDS:
        for gamma in (0.0, 0.4, 1.0):
            expected = [(t, round((1 - gamma) * s, 12)) for t, s in zip(times, times[1:])]
            c = next(got)
            assert c == expected, f"times {times}, gamma = {gamma}: f was called at (t, s) = {c}, expected {expected}"


@in_submission
def gamma_zero(sub):
    return [sub.sample_partial_renoise(gaussian_map("linear"), noise(500, 0), times, 0.0,
                                       generator=torch.Generator().manual_seed(1)) for times in GRIDS]


@pytest.mark.points(1)
def test_gamma_0_is_the_exact_chain(sub):
    for times, out in zip(GRIDS, sub.run(gamma_zero)):
        close(out, gaussian_map("linear")(noise(500, 0), 1.0, 0.0),
              f"gamma = 0 over the times {times} with a Gaussian's exact map, against f(x1, 1, 0)", 1e-12)


@in_submission
def in_distribution(sub, schedule):
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(40_000, 2, dtype=torch.float64, generator=g)           # noise(40_000, 2); g moves on
    return [sub.sample_partial_renoise(gaussian_map(schedule), x1, times, gamma, schedule, generator=g)
            for times in GRIDS[1:] for gamma in (0.3, 0.7)]


@pytest.mark.points(3)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_exact_in_distribution_for_every_gamma(sub, schedule):
    """With a Gaussian's exact map, 40,000 samples of gamma = 0.3 and 0.7 have the data's mean and
    standard deviation, and differ point by point from the chain's."""
    x1 = noise(40_000, 2)
    chain = gaussian_map(schedule)(x1, 1.0, 0.0)
    got = iter(sub.run(in_distribution, schedule))
    for times in GRIDS[1:]:
        for gamma in (0.3, 0.7):
            out = next(got)
            what = f"{schedule}, times {times}, gamma = {gamma}"
            assert out.shape == x1.shape and out.dtype == x1.dtype, f"{what}: output {out.dtype} {tuple(out.shape)}"
            close(out.mean(0), MU, f"{what}: the mean of 40,000 samples (5 standard errors allowed)", 5 * STD / 200)
            close(out.std(0), [STD, STD], f"{what}: the standard deviation of 40,000 samples", 0.01)
            assert (out - chain).norm(dim=1).mean() > 0.02, f"{what}: the samples must differ from the chain's"


# ------------------------------------------------------------------ gamma = 1: the released sampler

def network(schedule, param):
    torch.manual_seed(5)
    net = toynet.MLP(width=32, depth=2)
    cfg = soflow.SoFlowConfig(schedule=schedule, param=param, num_classes=None, guidance_scale=1.0, guidance_mix=1.0)
    return net, cfg


@in_submission
def gamma_one(sub, schedule, param):
    net, cfg = network(schedule, param)

    @torch.no_grad()
    def f(x, t, s):
        ones = torch.ones(x.shape[0])
        return soflow.solution(net, cfg, x, t * ones, s * ones)
    return [sub.sample_partial_renoise(f, noise(64, 6).float(), times, 1.0, schedule,
                                       generator=torch.Generator().manual_seed(7)) for times in GRIDS]


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule,param", [("linear", "euler"), ("trig", "trig")])
def test_gamma_1_is_the_released_sampler(sub, schedule, param):
    net, cfg = network(schedule, param)
    for times, out in zip(GRIDS, sub.run(gamma_one, schedule, param)):
        ref = soflow.sample_renoise(net, cfg, noise(64, 6).float(), times=times, generator=torch.Generator().manual_seed(7))
        close(out, ref, f"gamma = 1, times {times}, against soflow.sample_renoise with the same noise "
              "(drawn as the README says?)", 1e-5, 1e-5)

# ------------------------------------------------------------------ the sweep

def sweep_inputs():
    g = torch.Generator().manual_seed(8)
    x1 = torch.randn(2000, 2, dtype=torch.float64, generator=g)
    data = (MU + STD * torch.randn(2000, 2, dtype=torch.float64, generator=g)).numpy()
    floor = toy2d.energy_distance((MU + STD * torch.randn(2000, 2, dtype=torch.float64, generator=g)).numpy(), data)
    return x1, data, floor, g


@in_submission
def sweeps(sub):
    x1, data, _, g = sweep_inputs()
    return (sub.sweep(gaussian_map("linear"), x1, data, gammas=(0.0, 0.5, 1.0), steps=(2, 3), generator=g),
            sub.sweep(lambda x, t, s: x, x1, data, gammas=(0.5,), steps=(1,), generator=g))   # f = identity


@pytest.mark.points(2)
def test_sweep(sub, prerequisites):
    prerequisites("test_forward_kernel", "test_gamma_0_is_the_exact_chain")
    rows, identity = sub.run(sweeps)
    x1, data, floor, _ = sweep_inputs()
    assert [(r["gamma"], r["steps"]) for r in rows] == [(g, n) for n in (2, 3) for g in (0.0, 0.5, 1.0)], (
        f"rows (gamma, steps): {[(r['gamma'], r['steps']) for r in rows]}, expected steps outer, gamma inner")
    for r in rows:
        assert r["energy"] < 4 * floor + 0.002, f"{r}: the exact map's samples should look like the data"
    close(identity[0]["energy"], toy2d.energy_distance(x1.numpy(), data),
          "with f = identity, the energy distance (of the noise itself)", 0, 1e-9)
