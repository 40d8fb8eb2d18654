"""
Assignment 3: the four r(k, K) schedules of Eq. 16 and the l-schedule ablation of
Table 1a on the 2-D toy. Read README.md first.

    python assignments/a3_l_schedule/student.py --out out/a3_ablation   # writes ablation.md, schedules.png there

Fill in every function marked TODO(student); train_toy (which uses your
intermediate_time) and one_step_metrics are given.
Check yourself with:  python -m pytest -q assignments/a3_l_schedule/grader.py
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
    """Train the classroom's toy MLP on toy2d's Gaussian mixture with SoFlow's objective
    (Algorithm 1, from soflow's building blocks): t and s drawn as soflow draws them,
    l = intermediate_time(t, s, r_of_step(k)) at step k. Returns the network and its config."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    mixture = toy2d.default_mixture()
    cfg = toynet.config(steps)
    net = toynet.MLP(width=width)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    n = soflow.fm_count(cfg, batch)                          # lambda B samples for L_FM
    for k in range(steps):
        x0 = torch.from_numpy(toy2d.sample_data("gmm", batch, rng, mixture))
        x1 = torch.randn(x0.shape, generator=g)
        t_fm = soflow.fm_times(cfg, n, generator=g)
        t, _, s = soflow.scm_times(cfg, batch - n, k, generator=g)   # soflow's l is not used:
        l = intermediate_time(t, s, r_of_step(k), cfg.time_gap)      # yours, with this step's r
        x_t, v = soflow.interpolate(cfg, x0, x1, torch.cat([t_fm, t]))
        loss_fm = soflow.fm_loss(net, cfg, x_t[:n], t_fm, None, v[:n])[0]
        loss_sc = soflow.scm_loss(net, cfg, x_t[n:], t, l, s, None, v[n:])[0]
        loss = cfg.fm_ratio * loss_fm + (1 - cfg.fm_ratio) * loss_sc
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
    samples, write the table to <out>/ablation.md and the four r(k, K) curves to
    <out>/schedules.png (out: the folder given), and return the rows."""
    # TODO(student):
    #  1. draw eval_points noise points x1 once, their exact one-step map
    #     (toy2d.default_mixture().solve(x1, 1.0, 0.0)) and eval_points fresh data points;
    #  2. for each schedule: train_toy with r_of_step(k) = r_schedule(kind, k, steps, r_init, r_end),
    #     then one_step_metrics;
    #  3. collect one row per schedule with the keys
    #     schedule, r_start, r_mid, r_end (r at k = 0, steps // 2, steps), rmse, energy;
    #  4. write os.path.join(out, "ablation.md"): a markdown table with the header
    #     | schedule | r(0) | r(K/2) | r(K) | 1-NFE RMSE | energy distance |
    #     and one row per schedule, and os.path.join(out, "schedules.png"): the four
    #     r(k, K) curves (log y axis).
    raise NotImplementedError("run_ablation")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="The l-schedule ablation (Table 1a) on the 2-D toy")
    p.add_argument("--steps", type=int, default=3000, help="training steps per schedule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/a3_ablation", help="the folder for ablation.md and schedules.png")
    a = p.parse_args()
    torch.set_num_threads(1)
    run_ablation(a.out, a.steps, a.seed)
    print(open(os.path.join(a.out, "ablation.md")).read())
