"""
Assignment 4: classifier-free guidance at training time (Eq. 17-19) on a labelled
2-D Gaussian mixture, whose guided velocity field is known in closed form.
Read README.md first.

    python assignments/a4_cfg_toy/student.py --steps 2000 --out out/a4_cfg   # writes cfg.md, cfg.png there

Fill in the four functions marked TODO(student); the training loop, the exact
guided sampler and the experiment below them are given and use your functions.
Check yourself with:  python -m pytest -q assignments/a4_cfg_toy/grader.py
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

for _root in Path(__file__).resolve().parents:    # run as a script, it finds soflow.py, toy2d.py and
    if (_root / "soflow.py").is_file():             # the classroom's toynet.py all the same
        sys.path[:0] = [str(_root), str(_root / "assignments")]
        break
import soflow  # noqa: E402
import toy2d   # noqa: E402
import toynet  # noqa: E402


def labelled_mixture(num_classes=4, radius=1.0, std=0.5):
    """Equal Gaussians on a ring; a point's label is the component it was drawn from.
    std = 0.5 at radius 1 makes neighbouring classes overlap, so guidance has work to do."""
    angles = np.arange(num_classes) * 2 * np.pi / num_classes
    return toy2d.GaussianMixture(radius * np.stack([np.cos(angles), np.sin(angles)], 1), std, np.ones(num_classes))


def _bc(c, x):
    return c.reshape(-1, *([1] * (x.ndim - 1)))

# ---------------------------------------------------------------- the student's part

def mix_velocity(v_c, v_uncond, v_guided, w, m):
    """v_mix of Eq. 19: m (w v_c + (1 - w) v_uncond) + (1 - m) v_guided.
    w is a number or a tensor that broadcasts against the velocities."""
    # TODO(student): one line.
    raise NotImplementedError("mix_velocity")


def guided_target(net, cfg, x_t, t, y, keep, v_c):
    """The velocity the two losses regress on (Sec. 4.3), shape of v_c, without gradient:
      - samples that kept their label (keep True): v_mix with the decayed strength
        w(t) = 1 + (cfg.guidance_scale - 1) * soflow.guidance_decay(cfg, t) and m = cfg.guidance_mix, where
        v_uncond is the model's velocity with the null label (index cfg.num_classes) and
        v_guided its velocity with the label y (soflow.velocity, Eq. 10);
      - samples whose label was dropped (keep False, y already the null label): v_c."""
    # TODO(student): two gradient-free velocity passes, the per-sample w(t), mix_velocity, torch.where.
    raise NotImplementedError("guided_target")


def exact_guided_velocity(mixture, x, t, y, w):
    """The guided marginal velocity of Eq. 18, w v(x, t | y) + (1 - w) v(x, t), for points
    x (N, 2) with labels y (N,), in closed form (numpy, float64). The class-conditional
    velocity of class k is the velocity of the single Gaussian of component k:
    toy2d.GaussianMixture(mixture.means[k:k + 1], mixture.std, [1.0]).velocity(x, t);
    the unconditional one is mixture.velocity(x, t)."""
    # TODO(student): group the points by label.
    raise NotImplementedError("exact_guided_velocity")


def class_metrics(x, y, mixture):
    """How much the samples x (N, 2) look like their labels y (N,), as a dict of floats:
      posterior       mean of p(y | x) under the mixture (Bayes' rule on the components:
                      p(k | x) proportional to weight_k * N(x; mean_k, std^2 I))
      own_distance    mean distance to the own class mean
      other_distance  mean distance to the nearest other class mean"""
    # TODO(student): numpy; compute the log-densities and subtract their maximum before exp.
    raise NotImplementedError("class_metrics")

# ---------------------------------------------------------------- given: training, exact guided sampling

def solve_guided(mixture, x1, y, cfg):
    """Exact guided samples: the ODE dx/dt = w(t) v(x, t | y) + (1 - w(t)) v(x, t) from t = 1
    to 0 with w(t) = 1 + (guidance_scale - 1) guidance_decay(cfg, t), solved per class with scipy."""
    out = np.zeros_like(x1, dtype=np.float64)
    for k in np.unique(y):
        idx = y == k
        z, labels = x1[idx].astype(np.float64), y[idx]

        def rhs(t, flat):
            w = 1 + (cfg.guidance_scale - 1) * float(soflow.guidance_decay(cfg, torch.tensor([t], dtype=torch.float64)))
            return exact_guided_velocity(mixture, flat.reshape(z.shape), t, labels, w).ravel()
        sol = solve_ivp(rhs, (1.0, 0.0), z.ravel(), method="DOP853", rtol=1e-8, atol=1e-8)
        out[idx] = sol.y[:, -1].reshape(z.shape)
    return out


def config(w, m, steps, num_classes=4):
    """The classroom's toy settings (toynet.config) with labels and guidance."""
    return toynet.config(steps, num_classes=num_classes, label_drop=0.1, guidance_scale=w, guidance_mix=m)


def loss_step(net, cfg, x0, y, step, generator=None):
    """Algorithm 1 from soflow's building blocks, with guided_target making the targets."""
    B = x0.shape[0]
    n = soflow.fm_count(cfg, B)                             # lambda B samples for L_FM
    x1 = torch.randn(x0.shape, generator=generator)
    t_fm = soflow.fm_times(cfg, n, generator=generator)
    t_sc, l, s = soflow.scm_times(cfg, B - n, step, generator=generator)
    t = torch.cat([t_fm, t_sc])
    x_t, v_c = soflow.interpolate(cfg, x0, x1, t)
    y, keep = soflow.drop_labels(cfg, y, generator)
    v = guided_target(net, cfg, x_t, t, y, keep, v_c)
    loss_fm = soflow.fm_loss(net, cfg, x_t[:n], t_fm, y[:n], v[:n])[0] if n > 0 else 0
    loss_sc = soflow.scm_loss(net, cfg, x_t[n:], t_sc, l, s, y[n:], v[n:])[0] if n < B else 0
    return cfg.fm_ratio * loss_fm + (1 - cfg.fm_ratio) * loss_sc


def train_conditional(mixture, w, m, steps=2000, seed=0, width=128, batch=512):
    """A conditional toynet.MLP trained with guidance strength w and mix ratio m."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = config(w, m, steps, len(mixture.weights))
    net = toynet.MLP(width=width, depth=3, num_classes=len(mixture.weights))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        x0, y = mixture.sample(batch, rng)
        loss = loss_step(net, cfg, torch.from_numpy(x0).float(), torch.from_numpy(y), step, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return net, cfg


def one_step(net, cfg, x1, y):
    """The one-step samples f(x1, 1, 0 | y), numpy."""
    return soflow.sample(net, cfg, torch.from_numpy(x1).float(), torch.from_numpy(y)).numpy()


def experiment(out="out/a4_cfg", ws=(1.0, 2.0, 3.0), ms=(1.0, 0.25), steps=2000, seed=0, n=1000):
    """Train one model per (w, m), sample each class in one step, compare with the exact
    guided samples; write the table to <out>/cfg.md and the samples to <out>/cfg.png
    (out: the folder given)."""
    os.makedirs(out, exist_ok=True)
    mixture = labelled_mixture()
    rng = np.random.default_rng(seed + 1)
    x1 = rng.standard_normal((n, 2))
    y = np.arange(n) % len(mixture.weights)
    exact = {w: solve_guided(mixture, x1, y, config(w, 1.0, steps)) for w in ws}
    data, labels = mixture.sample(n, rng)
    rows, samples = [], {}
    lines = ["| sampler | w | m | p(y given x) | distance to own mean | distance to nearest other mean | RMSE to exact guided |",
             "|---|---|---|---|---|---|---|"]
    def add(name, w, m, x, rmse):
        r = {"sampler": name, "w": w, "m": m, **class_metrics(x, y if name != "data" else labels, mixture), "rmse": rmse}
        rows.append(r)
        lines.append(f"| {name} | {w} | {m} | {r['posterior']:.3f} | {r['own_distance']:.3f} | "
                     f"{r['other_distance']:.3f} | {'-' if rmse is None else f'{rmse:.3f}'} |")
    add("data", "-", "-", data, None)
    for w in ws:
        add("exact guided ODE", w, "-", exact[w], 0.0)
    for m in ms:
        for w in ws:
            net, cfg = train_conditional(mixture, w, m, steps, seed)
            samples[w, m] = one_step(net, cfg, x1, y)
            add("SoFlow 1-NFE", w, m, samples[w, m], toy2d.rmse(samples[w, m], exact[w]))
            print(lines[-1])
    with open(os.path.join(out, "cfg.md"), "w") as f:
        f.write(f"{steps} steps per model, seed {seed}, {n} samples (classes in turn)\n\n" + "\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(len(ms) + 1, len(ws), figsize=(4 * len(ws), 4 * (len(ms) + 1)), squeeze=False)
    panels = [(0, j, exact[w], f"exact guided ODE, w = {w}") for j, w in enumerate(ws)]
    panels += [(i + 1, j, samples[w, m], f"SoFlow 1-NFE, w = {w}, m = {m}") for i, m in enumerate(ms) for j, w in enumerate(ws)]
    for i, j, x, title in panels:
        a = ax[i, j]
        a.scatter(x[:, 0], x[:, 1], c=y, cmap="tab10", vmin=0, vmax=9, s=3, alpha=0.5)
        a.scatter(mixture.means[:, 0], mixture.means[:, 1], c="black", marker="x", s=40)
        a.set_title(title, fontsize=9); a.set_xlim(-3, 3); a.set_ylim(-3, 3); a.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cfg.png"), dpi=80)
    plt.close(fig)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Classifier-free guidance at training time on a labelled 2-D toy")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/a4_cfg", help="the folder for cfg.md and cfg.png")
    a = p.parse_args()
    torch.set_num_threads(1)
    experiment(a.out, steps=a.steps, seed=a.seed)
    print(open(os.path.join(a.out, "cfg.md")).read())
