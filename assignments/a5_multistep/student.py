"""
Assignment 5: multi-step sampling with a solution function, deterministic
(chaining f) against re-noising (jump to data, re-noise, repeat). Read README.md first.

    python assignments/a5_multistep/student.py --steps 2000 --out out/a5_multistep   # writes multistep.md there

Fill in the three functions marked TODO(student); the rest is given. A solution map
f(x, t, s) is any function of a tensor x (N, D) and two Python floats t >= s.
Check yourself with:  python -m pytest -q assignments/a5_multistep/grader.py
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

def sample_chain(f, x1, times):
    """Deterministic multi-step sampling: x <- f(x, t_i, t_{i+1}) for consecutive times
    1 = t_0 > t_1 > ... > t_N = 0 (a list of floats). Returns x at t_N."""
    # TODO(student): N calls of f.
    raise NotImplementedError("sample_chain")


def sample_renoise(f, x1, times, schedule="linear", generator=None):
    """Re-noising multi-step sampling (as the released code does): at each t_i (i < N)
    jump to data with x0 = f(x, t_i, 0); unless it is the last jump, re-noise it to
    t_{i+1}: x = alpha(t_{i+1}) x0 + beta(t_{i+1}) eps with fresh noise
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype) (alpha, beta from
    soflow.schedule(schedule, ...)). Returns the last x0."""
    # TODO(student): N calls of f, N - 1 draws of noise.
    raise NotImplementedError("sample_renoise")


def compare(f, x1, exact, data, steps=(1, 2, 4), generator=None):
    """Both samplers with N = 1, 2, 4, ... uniform steps (times torch.linspace(1, 0, N + 1).tolist()),
    two rows per N, chain first:
    {'sampler': 'chain' | 're-noise', 'steps': N, 'rmse': toy2d.rmse against the exact one-step
    samples `exact` (chain only; None for re-noise), 'energy': toy2d.energy_distance to `data`}."""
    # TODO(student): a loop over steps.
    raise NotImplementedError("compare")


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
    lines = ["| sampler | steps (NFE) | endpoint RMSE | energy distance |", "|---|---|---|---|"]
    for r in rows:
        rmse = "-" if r["rmse"] is None else f"{r['rmse']:.4f}"
        lines.append(f"| {r['sampler']} | {r['steps']} | {rmse} | {r['energy']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Deterministic against re-noising multi-step sampling on the 2-D toy")
    p.add_argument("--steps", type=int, default=2000, help="training steps of the toy model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", type=int, default=2000)
    p.add_argument("--out", default="out/a5_multistep", help="the folder for multistep.md")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    cfg = toynet.config(a.steps)
    mixture = toy2d.default_mixture()
    net = toynet.train(cfg, mixture, a.steps, a.seed)
    rng = np.random.default_rng(a.seed + 1)                 # the evaluation's own draws
    x1 = torch.from_numpy(rng.standard_normal((a.points, 2)).astype(np.float32))
    exact = mixture.solve(x1.numpy(), 1.0, 0.0, cfg.schedule)
    data = toy2d.sample_data("gmm", a.points, rng, mixture)
    floor = toy2d.energy_distance(toy2d.sample_data("gmm", a.points, rng, mixture), data)
    g = torch.Generator().manual_seed(a.seed)
    table = [f"Energy distance between two sets of {a.points} fresh data points (the noise floor): {floor:.4f}\n",
             "## the exact solution map (scipy) in place of the network\n",
             format_table(compare(exact_mixture_map(mixture), x1.double(), exact, data, generator=g)),
             f"\n## the trained toy model ({a.steps} steps)\n",
             format_table(compare(model_map(net, cfg), x1, exact, data, generator=g))]
    text = "\n".join(table) + "\n"
    with open(os.path.join(a.out, "multistep.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
