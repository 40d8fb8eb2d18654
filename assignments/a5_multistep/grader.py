"""
Grader of assignment 5 (deterministic against re-noising multi-step sampling).

    python -m pytest -q assignments/a5_multistep/grader.py                        # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a5_multistep/grader.py

The samplers are run with exact solution maps plugged in: the closed-form map of a
single Gaussian and scipy's map of toy2d's mixture. Chaining must then be exact
point by point, re-noising exact in distribution. On a random network they must
agree with soflow.sample_chain and soflow.sample_renoise given the same noise.
"""

import math

import pytest
import torch

import soflow
import toy2d

MU, STD = torch.tensor([0.7, -0.4], dtype=torch.float64), 0.3
GRIDS = [[1.0, 0.0], [1.0, 0.5, 0.0], [1.0, 0.7, 0.2, 0.0], [1.0, 0.75, 0.5, 0.25, 0.0]]


def gaussian_map(x, t, s):
    """The exact solution function of the linear schedule for data N(MU, STD^2 I): the
    ODE keeps each point's standardized coordinate (x - (1 - t) MU) / sd(t)."""
    sd = lambda u: math.sqrt((1 - u) ** 2 * STD**2 + u**2)
    return (1 - s) * MU + sd(s) / sd(t) * (x - (1 - t) * MU)


def spy(f, calls):
    def g(x, t, s):
        calls.append((float(t), float(s)))
        return f(x, t, s)
    return g

# ------------------------------------------------------------------ the deterministic chain

@pytest.mark.points(2)
def test_chain_is_exact_with_the_exact_map(sub):
    x1 = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    one_jump = gaussian_map(x1, 1.0, 0.0)
    for times in GRIDS:
        torch.testing.assert_close(sub.sample_chain(gaussian_map, x1, times), one_jump, rtol=0, atol=1e-12,
                                   msg=f"times {times}")
    mixture = toy2d.default_mixture()                      # a curved flow: scipy's exact map
    exact = lambda x, t, s: torch.from_numpy(mixture.solve(x.numpy(), t, s))
    x1 = x1[:100]
    torch.testing.assert_close(sub.sample_chain(exact, x1, [1.0, 0.6, 0.0]), exact(x1, 1.0, 0.0), rtol=0, atol=1e-6)


@pytest.mark.points(1)
def test_chain_calls_f_once_per_step(sub):
    for times in GRIDS:
        calls = []
        sub.sample_chain(spy(gaussian_map, calls), torch.zeros(3, 2, dtype=torch.float64), times)
        assert calls == list(zip(times, times[1:])), f"times {times}: f was called at (t, s) = {calls}"

# ------------------------------------------------------------------ re-noising

@pytest.mark.points(1)
def test_renoise_calls_f_once_per_step_towards_0(sub):
    for times in GRIDS:
        calls = []
        sub.sample_renoise(spy(gaussian_map, calls), torch.zeros(3, 2, dtype=torch.float64), times,
                           generator=torch.Generator().manual_seed(0))
        assert calls == [(t, 0.0) for t in times[:-1]], f"times {times}: f was called at (t, s) = {calls}"


@pytest.mark.points(3)
def test_renoise_is_exact_in_distribution(sub):
    """With the exact map, the output is distributed as the data N(MU, STD^2 I) whatever the
    grid, but differs point by point from the deterministic chain."""
    g = torch.Generator().manual_seed(1)
    n = 40_000
    x1 = torch.randn(n, 2, dtype=torch.float64, generator=g)
    for times in GRIDS[1:]:
        out = sub.sample_renoise(gaussian_map, x1, times, generator=g)
        assert out.shape == x1.shape and out.dtype == x1.dtype
        se = STD / math.sqrt(n)
        assert (out.mean(0) - MU).abs().max() < 5 * se, f"times {times}: mean {out.mean(0).tolist()}"
        assert (out.std(0) - STD).abs().max() < 0.01, f"times {times}: std {out.std(0).tolist()}"
        chain = gaussian_map(x1, 1.0, 0.0)
        assert (out - chain).norm(dim=1).mean() > 0.1, "re-noising must draw fresh noise"
    # one step: nothing to re-noise, the same as the chain
    torch.testing.assert_close(sub.sample_renoise(gaussian_map, x1, [1.0, 0.0], generator=g), gaussian_map(x1, 1.0, 0.0))
    # the same generator state gives the same samples
    a = sub.sample_renoise(gaussian_map, x1[:10], GRIDS[2], generator=torch.Generator().manual_seed(5))
    b = sub.sample_renoise(gaussian_map, x1[:10], GRIDS[2], generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)

# ------------------------------------------------------------------ against soflow.py on a network

@pytest.mark.points(2)
@pytest.mark.parametrize("schedule,param", [("linear", "euler"), ("trig", "trig")])
def test_samplers_match_soflow_on_a_network(sub, schedule, param):
    torch.manual_seed(2)
    net = toy2d.MLP(width=32, depth=2)
    cfg = soflow.SoFlowConfig(schedule=schedule, param=param, num_classes=None, guidance_scale=1.0, guidance_mix=1.0)

    @torch.no_grad()
    def f(x, t, s):
        ones = torch.ones(x.shape[0])
        return soflow.solution(net, cfg, x, t * ones, s * ones)
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    for times in GRIDS:
        torch.testing.assert_close(sub.sample_chain(f, x1, times), soflow.sample_chain(net, cfg, x1, times=times),
                                   msg=f"chain, times {times}")
        got = sub.sample_renoise(f, x1, times, schedule=schedule, generator=torch.Generator().manual_seed(4))
        ref = soflow.sample_renoise(net, cfg, x1, times=times, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(got, ref, msg=f"re-noise, times {times} (noise drawn as the README says?)")

# ------------------------------------------------------------------ the comparison table

@pytest.mark.points(2)
def test_compare(sub, prerequisites):
    prerequisites("test_chain_is_exact_with_the_exact_map", "test_renoise_is_exact_in_distribution")
    g = torch.Generator().manual_seed(6)
    x1 = torch.randn(2000, 2, dtype=torch.float64, generator=g)
    exact = gaussian_map(x1, 1.0, 0.0)
    data = (MU + STD * torch.randn(2000, 2, dtype=torch.float64, generator=g)).numpy()
    floor = toy2d.energy_distance((MU + STD * torch.randn(2000, 2, dtype=torch.float64, generator=g)).numpy(), data)
    rows = sub.compare(gaussian_map, x1, exact.numpy(), data, steps=(1, 2, 4), generator=g)
    assert [(r["sampler"], r["steps"]) for r in rows] == [(s, n) for n in (1, 2, 4) for s in ("chain", "re-noise")]
    for r in rows:
        assert r["energy"] < 4 * floor + 0.002, f"{r}: the exact map's samples should look like the data"
        if r["sampler"] == "chain":
            assert r["rmse"] is not None and r["rmse"] < 1e-9, f"{r}: chaining the exact map is exact"
        else:
            assert r["rmse"] is None
    noise = sub.compare(lambda x, t, s: x, x1, exact.numpy(), data, steps=(1,), generator=g)   # f = identity
    assert noise[0]["rmse"] == pytest.approx(toy2d.rmse(x1.numpy(), exact.numpy()), rel=1e-9)
    assert noise[0]["energy"] == pytest.approx(toy2d.energy_distance(x1.numpy(), data), rel=1e-9)
