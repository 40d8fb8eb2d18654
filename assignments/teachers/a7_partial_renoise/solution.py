"""
Assignment 7, reference solution: a multi-step sampler between chaining and
re-noising. At each step jump down the trajectory to u = (1 - gamma) t_{i+1} with
the solution map, then go back up to t_{i+1} with the exact forward kernel of the
noising schedule and fresh noise. gamma = 0 is the deterministic chain, gamma = 1 the
released re-noising sampler; with the exact map every gamma is exact in distribution.

    python assignments/teachers/a7_partial_renoise/solution.py --steps 2000 --out out/a7_partial_renoise
"""

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

for _root in Path(__file__).resolve().parents:    # run as a script, it finds soflow.py, toy2d.py and
    if (_root / "soflow.py").is_file():             # the classroom's toynet.py all the same
        sys.path[:0] = [str(_root), str(_root / "assignments")]
        break
import soflow  # noqa: E402
import toy2d   # noqa: E402
import toynet  # noqa: E402

# ---------------------------------------------------------------- the student's part

def forward_kernel(schedule, u, t):
    """(scale, std) such that scale x_u + std eps, eps ~ N(0, I) independent, is distributed as
    x_t whenever x_u is distributed as x_u (u <= t < 1). With x_u = alpha(u) x0 + beta(u) x1:
    scale alpha(u) = alpha(t) keeps the data's share, and the noise variances add up,
    scale^2 beta(u)^2 + std^2 = beta(t)^2."""
    coefficients = lambda v: [float(c) for c in soflow.schedule(schedule, torch.tensor(float(v), dtype=torch.float64))[:2]]
    (alpha_u, beta_u), (alpha_t, beta_t) = coefficients(u), coefficients(t)
    scale = alpha_t / alpha_u
    return scale, math.sqrt(max(beta_t**2 - (scale * beta_u) ** 2, 0.0))   # max: round-off at u = t


def sample_partial_renoise(f, x1, times, gamma, schedule="linear", generator=None):
    """At each t_i (i < N) jump with the solution map to u = (1 - gamma) t_{i+1}; unless it
    was the last jump, go back up to t_{i+1}: x = scale x + std eps (forward_kernel, fresh
    noise drawn once per step). Returns the last jump's output."""
    x = x1
    for i, (t, t_next) in enumerate(zip(times, times[1:])):
        u = (1 - gamma) * t_next
        x = f(x, t, u)
        if i < len(times) - 2:
            scale, std = forward_kernel(schedule, u, t_next)
            x = scale * x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


def sweep(f, x1, data, gammas=(0.0, 0.25, 0.5, 0.75, 1.0), steps=(2, 4), schedule="linear", generator=None):
    """Every gamma with N = steps uniform steps (times torch.linspace(1, 0, N + 1).tolist());
    one row each, steps outer: {'gamma', 'steps', 'energy': energy distance to data}."""
    rows = []
    for n in steps:
        times = torch.linspace(1, 0, n + 1).tolist()
        for gamma in gammas:
            out = sample_partial_renoise(f, x1, times, gamma, schedule, generator)
            rows.append({"gamma": gamma, "steps": n, "energy": toy2d.energy_distance(out, data)})
    return rows

# ---------------------------------------------------------------- given

def model_map(net, cfg):
    """A trained model as a solution map f(x, t, s) on tensors, with float times."""
    @torch.no_grad()
    def f(x, t, s):
        ones = torch.ones(x.shape[0], dtype=x.dtype)
        return soflow.solution(net, cfg, x, t * ones, s * ones)
    return f


def exact_mixture_map(mixture, schedule="linear"):
    """The exact solution map of a toy2d.GaussianMixture (scipy's ODE solver), on tensors."""
    def f(x, t, s):
        if t == s:
            return x
        return torch.from_numpy(mixture.solve(x.double().numpy(), t, s, schedule)).to(x.dtype)
    return f


def format_table(rows):
    steps = sorted({r["steps"] for r in rows})
    lines = ["| gamma | " + " | ".join(f"{n} steps: energy distance" for n in steps) + " |",
             "|---" * (len(steps) + 1) + "|"]
    for gamma in dict.fromkeys(r["gamma"] for r in rows):
        cells = [f"{r['energy']:.4f}" for n in steps for r in rows if r["steps"] == n and r["gamma"] == gamma]
        lines.append(f"| {gamma} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Between chaining and re-noising: the noise knob gamma on the 2-D toy")
    p.add_argument("--steps", type=int, default=2000, help="training steps of the toy model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", type=int, default=2000)
    p.add_argument("--out", default="out/a7_partial_renoise", help="the folder for partial_renoise.md")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    cfg = toynet.config(a.steps)
    mixture = toy2d.default_mixture()
    net = toynet.train(cfg, mixture, a.steps, a.seed)
    rng = np.random.default_rng(a.seed + 1)                 # the evaluation's own draws
    x1 = torch.from_numpy(rng.standard_normal((a.points, 2)).astype(np.float32))
    data = toy2d.sample_data("gmm", a.points, rng, mixture)
    floor = toy2d.energy_distance(toy2d.sample_data("gmm", a.points, rng, mixture), data)
    g = torch.Generator().manual_seed(a.seed)
    text = "\n".join([
        f"Energy distance between two sets of {a.points} fresh data points (the noise floor): {floor:.4f}\n",
        "## the exact solution map (scipy) in place of the network\n",
        format_table(sweep(exact_mixture_map(mixture), x1.double(), data, generator=g)),
        f"\n## the trained toy model ({a.steps} steps)\n",
        format_table(sweep(model_map(net, cfg), x1, data, generator=g))]) + "\n"
    with open(os.path.join(a.out, "partial_renoise.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
