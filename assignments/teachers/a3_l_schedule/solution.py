"""
Assignment 3, reference solution: the four r(k, K) schedules of Eq. 16 and the
l-schedule ablation of Table 1a on the 2-D toy.

    python assignments/teachers/a3_l_schedule/solution.py --out out/a3_ablation
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
    """r(k, K) of Eq. 16 (Appendix A), from r_init at k = 0 down to r_end at k = K;
    k is clamped to [0, K]."""
    u = min(max(k, 0), K) / K
    if kind == "exponential":
        return r_init * (r_end / r_init) ** u
    if kind == "cosine":
        return r_end + (r_init - r_end) * (1 + math.cos(math.pi * u)) / 2
    if kind == "linear":
        return r_init + (r_end - r_init) * u
    if kind == "constant":
        return r_end
    raise ValueError(f"unknown schedule {kind!r}")


def intermediate_time(t, s, r, gap=1e-4):
    """l = t + (s - t) r (Eq. 16), clamped to l <= t - gap."""
    return torch.minimum(t + (s - t) * r, t - gap)

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
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    mixture = toy2d.default_mixture()
    x1 = rng.standard_normal((eval_points, 2))
    exact = mixture.solve(x1, 1.0, 0.0)                     # once, shared by the four runs
    data = toy2d.sample_data("gmm", eval_points, rng, mixture)
    rows = []
    for kind in SCHEDULES:
        net, cfg = train_toy(lambda k, kind=kind: r_schedule(kind, k, steps, r_init, r_end), steps, seed, width, batch)
        rmse, energy = one_step_metrics(net, cfg, x1, exact, data)
        rows.append({"schedule": kind, "r_start": r_schedule(kind, 0, steps, r_init, r_end),
                     "r_mid": r_schedule(kind, steps // 2, steps, r_init, r_end),
                     "r_end": r_schedule(kind, steps, steps, r_init, r_end), "rmse": rmse, "energy": energy})
        print(f"{kind:<12} 1-NFE RMSE {rmse:.4f}  energy distance {energy:.4f}")

    lines = ["| schedule | r(0) | r(K/2) | r(K) | 1-NFE RMSE | energy distance |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['schedule']} | {r['r_start']:.5f} | {r['r_mid']:.5f} | {r['r_end']:.5f} | "
              f"{r['rmse']:.4f} | {r['energy']:.4f} |" for r in rows]
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write(f"{steps} steps per schedule, seed {seed}, r_init {r_init}, r_end {r_end}\n\n")
        f.write("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = np.arange(steps + 1)
    for kind in SCHEDULES:
        ax.plot(ks, [r_schedule(kind, k, steps, r_init, r_end) for k in ks], label=kind)
    ax.set_yscale("log"); ax.set_xlabel("step k"); ax.set_ylabel("r(k, K)"); ax.legend()
    ax.set_title("l = t + (s - t) r(k, K)  (Eq. 16)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "schedules.png"), dpi=90)
    plt.close(fig)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="The l-schedule ablation (Table 1a) on the 2-D toy")
    p.add_argument("--steps", type=int, default=3000, help="training steps per schedule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/a3_ablation", help="the folder for ablation.md and schedules.png")
    a = p.parse_args()
    torch.set_num_threads(1)
    run_ablation(a.out, a.steps, a.seed)
    print(open(os.path.join(a.out, "ablation.md")).read())
