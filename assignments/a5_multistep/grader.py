"""
Grader of assignment 5 (deterministic against re-noising multi-step sampling).

    python -m pytest -q assignments/a5_multistep/grader.py                        # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a5_multistep/grader.py

The samplers are run with exact solution maps plugged in: the closed-form map of a
single Gaussian and scipy's map of toy2d's mixture. Chaining must then be exact
point by point, re-noising exact in distribution. On a random network they must
agree with soflow.sample_chain and soflow.sample_renoise given the same noise. The
functions marked @in_submission run in the submission's process and only return
values; the tests check them here (see runner.py).
"""

import math

import pytest
import torch

import soflow
import toy2d
import toynet
from checks import close
from runner import in_submission

FUNCTIONS = ("sample_chain", "sample_renoise", "compare")
MU, STD = torch.tensor([0.7, -0.4], dtype=torch.float64), 0.3
GRIDS = [[1.0, 0.0], [1.0, 0.5, 0.0], [1.0, 0.7, 0.2, 0.0], [1.0, 0.75, 0.5, 0.25, 0.0]]


def gaussian_map(x, t, s):
    """The exact solution function of the linear schedule for data N(MU, STD^2 I): the
    ODE keeps each point's standardized coordinate (x - (1 - t) MU) / sd(t)."""
    sd = lambda u: math.sqrt((1 - u) ** 2 * STD**2 + u**2)
    return (1 - s) * MU + sd(s) / sd(t) * (x - (1 - t) * MU)


def mixture_map(x, t, s):
    """scipy's exact solution map of toy2d's mixture: a curved flow."""
    return torch.from_numpy(toy2d.default_mixture().solve(x.numpy(), t, s))


def spy(f, calls):
    def g(x, t, s):
        calls.append((float(t), float(s)))
        return f(x, t, s)
    return g


def noise(n, seed):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

# ------------------------------------------------------------------ the deterministic chain

@in_submission
def chains(sub):
    x1 = noise(500, 0)
    return [sub.sample_chain(gaussian_map, x1, times) for times in GRIDS], sub.sample_chain(mixture_map, x1[:100], [1.0, 0.6, 0.0])


@pytest.mark.points(2)
def test_chain_is_exact_with_the_exact_map(sub):
    gaussian, mixture = sub.run(chains)
    x1 = noise(500, 0)
    for times, out in zip(GRIDS, gaussian):
        close(out, gaussian_map(x1, 1.0, 0.0), f"the chain over the times {times} with a Gaussian's exact map, "
              "against the one-jump map f(x1, 1, 0),", 1e-12)
    close(mixture, mixture_map(x1[:100], 1.0, 0.0), "the chain over the times [1, 0.6, 0] with the mixture's exact "
          "map, against the one-jump map f(x1, 1, 0),", 1e-6)


@in_submission
def chain_calls(sub):
    calls = [[] for _ in GRIDS]
    for times, c in zip(GRIDS, calls):
        sub.sample_chain(spy(gaussian_map, c), torch.zeros(3, 2, dtype=torch.float64), times)
    return calls


@pytest.mark.points(1)
def test_chain_calls_f_once_per_step(sub):
    for times, calls in zip(GRIDS, sub.run(chain_calls)):
        assert calls == list(zip(times, times[1:])), f"times {times}: f was called at (t, s) = {calls}"

# ------------------------------------------------------------------ re-noising

@in_submission
def renoise_calls(sub):
    calls = [[] for _ in GRIDS]
    for times, c in zip(GRIDS, calls):
        sub.sample_renoise(spy(gaussian_map, c), torch.zeros(3, 2, dtype=torch.float64), times,
                           generator=torch.Generator().manual_seed(0))
    return calls


@pytest.mark.points(1)
def test_renoise_calls_f_once_per_step_towards_0(sub):
    for times, calls in zip(GRIDS, sub.run(renoise_calls)):
        assert calls == [(t, 0.0) for t in times[:-1]], f"times {times}: f was called at (t, s) = {calls}"


@in_submission
def renoised(sub):
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(40_000, 2, dtype=torch.float64, generator=g)     # noise(40_000, 1); g moves on
    grids = [sub.sample_renoise(gaussian_map, x1, times, generator=g) for times in GRIDS[1:]]
    one = sub.sample_renoise(gaussian_map, x1, [1.0, 0.0], generator=g)
    twice = [sub.sample_renoise(gaussian_map, x1[:10], GRIDS[2], generator=torch.Generator().manual_seed(5))
             for _ in range(2)]
    return grids, one, twice


@pytest.mark.points(3)
def test_renoise_is_exact_in_distribution(sub):
    """With the exact map, the output is distributed as the data N(MU, STD^2 I) whatever the
    grid, but differs point by point from the deterministic chain."""
    grids, one, (a, b) = sub.run(renoised)
    x1 = noise(40_000, 1)
    chain = gaussian_map(x1, 1.0, 0.0)
    se = STD / math.sqrt(len(x1))
    for times, out in zip(GRIDS[1:], grids):
        assert out.shape == x1.shape and out.dtype == x1.dtype, f"times {times}: output {out.dtype} {tuple(out.shape)}"
        close(out.mean(0), MU, f"times {times}: the mean of 40,000 re-noised samples (5 standard errors allowed)", 5 * se)
        close(out.std(0), [STD, STD], f"times {times}: the standard deviation of 40,000 re-noised samples", 0.01)
        assert (out - chain).norm(dim=1).mean() > 0.1, f"times {times}: re-noising must draw fresh noise"
    close(one, chain, "one step of re-noising (nothing to re-noise: the one-jump map)", 1e-12)
    assert torch.equal(a, b), "the same generator state must give the same samples"

# ------------------------------------------------------------------ against soflow.py on a network

def network(schedule, param):
    torch.manual_seed(2)
    net = toynet.MLP(width=32, depth=2)
    cfg = soflow.SoFlowConfig(schedule=schedule, param=param, num_classes=None, guidance_scale=1.0, guidance_mix=1.0)
    return net, cfg


@in_submission
def on_network(sub, schedule, param):
    net, cfg = network(schedule, param)

    @torch.no_grad()
    def f(x, t, s):
        ones = torch.ones(x.shape[0])
        return soflow.solution(net, cfg, x, t * ones, s * ones)
    x1 = noise(64, 3).float()
    return [(sub.sample_chain(f, x1, times),
             sub.sample_renoise(f, x1, times, schedule=schedule, generator=torch.Generator().manual_seed(4)))
            for times in GRIDS]


@pytest.mark.points(2)
@pytest.mark.parametrize("schedule,param", [("linear", "euler"), ("trig", "trig")])
def test_samplers_match_soflow_on_a_network(sub, schedule, param):
    got = sub.run(on_network, schedule, param)
    net, cfg = network(schedule, param)
    x1 = noise(64, 3).float()
    for times, (chain, renoise) in zip(GRIDS, got):
        close(chain, soflow.sample_chain(net, cfg, x1, times=times), f"the chain, times {times}, against soflow.sample_chain",
              1e-5, 1.3e-6)
        ref = soflow.sample_renoise(net, cfg, x1, times=times, generator=torch.Generator().manual_seed(4))
        close(renoise, ref, f"re-noising, times {times}, against soflow.sample_renoise with the same noise "
              "(drawn as the README says?)", 1e-5, 1.3e-6)

# ------------------------------------------------------------------ the comparison table

def comparison_inputs():
    g = torch.Generator().manual_seed(6)
    x1 = torch.randn(2000, 2, dtype=torch.float64, generator=g)
    data = (MU + STD * torch.randn(2000, 2, dtype=torch.float64, generator=g)).numpy()
    floor = toy2d.energy_distance((MU + STD * torch.randn(2000, 2, dtype=torch.float64, generator=g)).numpy(), data)
    return x1, gaussian_map(x1, 1.0, 0.0).numpy(), data, floor, g


@in_submission
def comparisons(sub):
    x1, exact, data, _, g = comparison_inputs()
    return (sub.compare(gaussian_map, x1, exact, data, steps=(1, 2, 4), generator=g),
            sub.compare(lambda x, t, s: x, x1, exact, data, steps=(1,), generator=g))      # f = identity


@pytest.mark.points(2)
def test_compare(sub, prerequisites):
    prerequisites("test_chain_is_exact_with_the_exact_map", "test_renoise_is_exact_in_distribution")
    rows, identity = sub.run(comparisons)
    x1, exact, data, floor, _ = comparison_inputs()
    assert [(r["sampler"], r["steps"]) for r in rows] == [(s, n) for n in (1, 2, 4) for s in ("chain", "re-noise")], (
        f"rows (sampler, steps): {[(r['sampler'], r['steps']) for r in rows]}")
    for r in rows:
        assert r["energy"] < 4 * floor + 0.002, f"{r}: the exact map's samples should look like the data"
        if r["sampler"] == "chain":
            assert r["rmse"] is not None and r["rmse"] < 1e-9, f"{r}: chaining the exact map is exact"
        else:
            assert r["rmse"] is None, f"{r}: re-noised samples have no pointwise counterpart: rmse None"
    close(identity[0]["rmse"], toy2d.rmse(x1.numpy(), exact), "with f = identity, the chain's rmse", 0, 1e-9)
    close(identity[0]["energy"], toy2d.energy_distance(x1.numpy(), data), "with f = identity, the chain's energy distance", 0, 1e-9)
