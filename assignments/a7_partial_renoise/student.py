"""
Assignment 7: a multi-step sampler between chaining and re-noising. Read README.md first.

At each step, jump down the trajectory with the solution map to u = (1 - gamma) t_{i+1},
then go back up to t_{i+1} with the noising schedule's forward kernel and fresh noise.
gamma = 0 is the deterministic chain, gamma = 1 the released re-noising sampler.

    python assignments/a7_partial_renoise/student.py --steps 2000 --out out/a7_partial_renoise

Fill in the three functions marked TODO(student); the rest is given. A solution map
f(x, t, s) is any function of a tensor x (N, D) and two Python floats t >= s.
Check yourself with:  python -m pytest -q assignments/a7_partial_renoise/grader.py
"""

import argparse
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
    """(scale, std), Python floats, such that scale x_u + std eps, with eps ~ N(0, I)
    independent of x_u, is distributed as x_t whenever x_u is distributed as x_u
    (0 <= u <= t < 1). alpha and beta from soflow.schedule(schedule, ...)."""
    # TODO(student): write x_u = alpha(u) x0 + beta(u) x1 and match the data's share and the noise's variance.
    raise NotImplementedError("forward_kernel")


def sample_partial_renoise(f, x1, times, gamma, schedule="linear", generator=None):
    """At each t_i (i < N) jump with the solution map to u = (1 - gamma) t_{i+1},
    x = f(x, t_i, u); unless it was the last jump, go back up to t_{i+1} with
    x = scale x + std eps (forward_kernel), eps = torch.randn(x.shape, generator=generator,
    dtype=x.dtype) drawn once per such step (also when std is 0). Returns the last jump's output."""
    # TODO(student): N calls of f, N - 1 draws of noise.
    raise NotImplementedError("sample_partial_renoise")


def sweep(f, x1, data, gammas=(0.0, 0.25, 0.5, 0.75, 1.0), steps=(2, 4), schedule="linear", generator=None):
    """Every gamma with N = steps uniform steps (times torch.linspace(1, 0, N + 1).tolist()),
    one row each, steps outer and gamma inner:
    {'gamma': gamma, 'steps': N, 'energy': toy2d.energy_distance(samples, data)}."""
    # TODO(student): two loops.
    raise NotImplementedError("sweep")

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
