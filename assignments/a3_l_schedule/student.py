"""
Assignment 3: the four r(k, K) schedules of Eq. 16 and the l-schedule ablation of
Table 1a on the 2-D toy. Read README.md first.

    python assignments/a3_l_schedule/student.py                # writes out/a3_ablation/

Fill in every function marked TODO(student); train_toy and one_step_metrics are given.
Check yourself with:  python -m pytest -q assignments/a3_l_schedule/grader.py
"""

import argparse
import math
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)     # run as a script, it finds soflow.py and toy2d.py all the same
import soflow  # noqa: E402
import toy2d   # noqa: E402

SCHEDULES = ("exponential", "cosine", "linear", "constant")


def r_schedule(kind, k, K, r_init, r_end):
    """r(k, K) of Eq. 16 (Appendix A), from r_init at k = 0 down to r_end at k = K, for
    kind in SCHEDULES; k is clamped to [0, K]. Returns a Python float."""
    # TODO(student): the four schedules of Appendix A.
    raise NotImplementedError("r_schedule")


def intermediate_time(t, s, r, gap=1e-4):
    """l = t + (s - t) r (Eq. 16) for tensors t, s of shape (B,), clamped to l <= t - gap."""
    # TODO(student): one line.
    raise NotImplementedError("intermediate_time")


# ---------------------------------------------------------------- given: training and evaluation

def train_toy(r_of_step, steps, seed=0, width=256, batch=1024):
    """Train toy2d's MLP on toy2d's Gaussian mixture with soflow.soflow_loss, with
    r = r_of_step(k) at step k. Returns the network and its config."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mixture = toy2d.default_mixture()
    cfg = toy2d.toy_defaults(steps)
    net = toy2d.MLP(width=width)                             # toy2d's network: 4 layers
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for k in range(steps):
        r = r_of_step(k)
        step_cfg = cfg.replace(r_schedule="constant", r_init=r, r_end=r)   # soflow's loss with this r
        x0 = torch.from_numpy(toy2d.sample_data("gmm", batch, rng, mixture))
        loss, _ = soflow.soflow_loss(net, step_cfg, x0, step=k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return net, cfg


def one_step_metrics(net, cfg, x1, exact, data):
    """(RMSE of the one-step samples f(x1, 1, 0) against the exact map, energy distance to data)."""
    out = soflow.sample(net, cfg, torch.from_numpy(x1).float()).numpy()
    return toy2d.rmse(out, exact), toy2d.energy_distance(out, data)

# ---------------------------------------------------------------- the ablation

def run_ablation(out="out/a3_ablation", steps=3000, seed=0, width=256, batch=1024, eval_points=1000,
                 r_init=0.2, r_end=0.002):
    """Train one toy model per schedule (same seed, same data), evaluate its one-step
    samples, write out/ablation.md (the table) and out/schedules.png (the four r(k, K)),
    and return the rows."""
    # TODO(student):
    #  1. draw eval_points noise points x1 once, their exact one-step map
    #     (toy2d.default_mixture().solve(x1, 1.0, 0.0)) and eval_points fresh data points;
    #  2. for each schedule: train_toy with r_of_step(k) = r_schedule(kind, k, steps, r_init, r_end),
    #     then one_step_metrics;
    #  3. collect one row per schedule with the keys
    #     schedule, r_start, r_mid, r_end (r at k = 0, steps // 2, steps), rmse, energy;
    #  4. write out/ablation.md: a markdown table with the header
    #     | schedule | r(0) | r(K/2) | r(K) | 1-NFE RMSE | energy distance |
    #     and one row per schedule, and out/schedules.png: the four r(k, K) curves (log y axis).
    raise NotImplementedError("run_ablation")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="The l-schedule ablation (Table 1a) on the 2-D toy")
    p.add_argument("--steps", type=int, default=3000, help="training steps per schedule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/a3_ablation")
    a = p.parse_args()
    torch.set_num_threads(1)
    run_ablation(a.out, a.steps, a.seed)
    print(open(os.path.join(a.out, "ablation.md")).read())
