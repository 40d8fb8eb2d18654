"""
Assignment 5, reference solution: multi-step sampling with a solution function,
deterministic (chaining f) against re-noising (jump to data, re-noise, repeat).

    python assignments/teachers/a5_multistep/solution.py --steps 2000 --out out/a5_multistep
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
    1 = t_0 > t_1 > ... > t_N = 0. With the exact f this is exact point by point,
    whatever the times: f(f(x, t, l), l, s) = f(x, t, s)."""
    x = x1
    for t, s in zip(times, times[1:]):
        x = f(x, t, s)
    return x


def sample_renoise(f, x1, times, schedule="linear", generator=None):
    """Re-noising multi-step sampling (as the released code does): at each t_i jump to
    data with f(x, t_i, 0); unless it is the last jump, re-noise that estimate to
    t_{i+1} with fresh noise, x = alpha(t_{i+1}) x0 + beta(t_{i+1}) eps. With the exact f
    each x0 is an exact data sample, so each re-noised x is an exact sample of p_{t_{i+1}}:
    the output is exact in distribution (not point by point)."""
    x = x1
    for i, t in enumerate(times[:-1]):
        x0 = f(x, t, 0.0)
        if i < len(times) - 2:
            alpha, beta, _, _ = (float(c) for c in soflow.schedule(schedule, torch.tensor(float(times[i + 1]))))
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = alpha * x0 + beta * eps
    return x0


def compare(f, x1, exact, data, steps=(1, 2, 4), generator=None):
    """Both samplers with N = 1, 2, 4, ... uniform steps; one row each:
    {'sampler': 'chain' | 're-noise', 'steps': N, 'rmse': RMSE against the exact one-step
    map (chain only; None for re-noise, whose samples have no pointwise counterpart),
    'energy': energy distance to the data points}."""
    rows = []
    for n in steps:
        times = torch.linspace(1, 0, n + 1).tolist()
        chain = sample_chain(f, x1, times)
        renoise = sample_renoise(f, x1, times, generator=generator)
        rows.append({"sampler": "chain", "steps": n, "rmse": toy2d.rmse(chain, exact),
                     "energy": toy2d.energy_distance(chain, data)})
        rows.append({"sampler": "re-noise", "steps": n, "rmse": None,
                     "energy": toy2d.energy_distance(renoise, data)})
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
