"""
SoFlow on 2-D toy data: trains on a laptop CPU in about a minute and draws what
the method learns.

    python toy2d.py                          # Gaussian mixture, the default
    python toy2d.py --dataset checkerboard   # or moons, spiral
    python toy2d.py --help                   # every knob
    python toy2d.py --method meanflow        # or direct, fgm, fm: a baseline (baselines.py)
    python toy2d.py --compare                # all five on the same data, steps and MLP

A small MLP F(x, t, s) becomes the solution function f(x, t, s) = a x + b F of
the flow-matching ODE (soflow.py). For the Gaussian mixture the marginal velocity
has a closed form, so the exact solution map is known (up to scipy's adaptive ODE
solver's tolerance) and the one-step samples can be compared point by point with
where the true ODE takes the same noise. Outputs, in --out:
  toy2d.png     data, 1-NFE and 2-NFE samples, solution trajectories over the
                exact ones, the velocity head's field, the loss curve
  results.json  the table printed at the end
  samples.npz   the noise points, their 1-NFE samples, and the mixture
With --method NAME (a baseline): toy2d_NAME.png and results_NAME.json; with --compare:
compare.png (a column per method) and compare.json (the table).
"""

import argparse
import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
from scipy.integrate import solve_ivp
from tqdm import tqdm

import baselines
import soflow

# -----------------------------------------------------------------------------
# Data. Every dataset is scaled to roughly unit variance, like the noise.

class GaussianMixture:
    """A mixture of isotropic Gaussians sum_k w_k N(mu_k, std^2 I) whose flow-matching
    velocity is known in closed form: given x_t and component k, (x0, x1) are jointly
    Gaussian, so E[x0 | x_t] and E[x1 | x_t] follow from Gaussian conditioning."""

    def __init__(self, means, std, weights):
        self.means = np.asarray(means, dtype=np.float64)
        self.std = float(std)
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)

    def sample(self, n, rng):
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        return self.means[k] + self.std * rng.standard_normal((n, self.means.shape[1])), k

    def velocity(self, x, t, schedule="linear"):
        """The marginal velocity v(x, t) = E[alpha' x0 + beta' x1 | x_t = x] (Eq. 1); x (N, D)."""
        alpha, beta, da, db = (float(c) for c in soflow.schedule(schedule, torch.tensor(t, dtype=torch.float64)))
        var = alpha**2 * self.std**2 + beta**2                          # Var[x_t | k] per coordinate
        diff = x[:, None, :] - alpha * self.means[None]                  # (N, K, D)
        logp = np.log(self.weights)[None] - (diff**2).sum(-1) / (2 * var)
        post = np.exp(logp - logp.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)                               # p(k | x_t)
        e_x0 = self.means[None] + (alpha * self.std**2 / var) * diff      # E[x0 | x_t, k]
        e_x1 = (beta / var) * diff                                       # E[x1 | x_t, k]
        return np.einsum("nk,nkd->nd", post, da * e_x0 + db * e_x1)

    def solve(self, x, t, s, schedule="linear", s_eval=None, rtol=1e-9, atol=1e-9):
        """The exact solution map f(x, t, s): integrate dX/du = v(X, u) from u = t to u = s
        with scipy's adaptive Runge-Kutta (DOP853). With s_eval, returns the states at
        those times, shape (len(s_eval), N, D)."""
        x = np.asarray(x, dtype=np.float64)
        shape = x.shape
        rhs = lambda u, z: self.velocity(z.reshape(shape), u, schedule).ravel()
        sol = solve_ivp(rhs, (t, s), x.ravel(), method="DOP853", rtol=rtol, atol=atol, t_eval=s_eval)
        if not sol.success:
            raise RuntimeError(f"ODE solver failed: {sol.message}")
        if s_eval is not None:
            return sol.y.T.reshape(len(s_eval), *shape)
        return sol.y[:, -1].reshape(shape)


def default_mixture():
    """Eight unequal components on a ring plus one in the middle."""
    angles = np.arange(8) * 2 * np.pi / 8
    means = np.concatenate([1.6 * np.stack([np.cos(angles), np.sin(angles)], 1), [[0.0, 0.0]]])
    weights = np.array([2, 1, 2, 1, 2, 1, 2, 1, 3], dtype=np.float64)
    return GaussianMixture(means, 0.12, weights)


def sample_data(name, n, rng, mixture=None):
    """n points of a dataset, float32 (n, 2)."""
    if name == "gmm":
        x, _ = mixture.sample(n, rng)
    elif name == "checkerboard":
        u = rng.uniform(-2, 2, size=(n, 2))                 # 4x4 board of unit cells
        cell = np.floor(u[:, 0]) + np.floor(u[:, 1])
        u[:, 1] = np.where(cell % 2 == 0, u[:, 1], np.where(u[:, 1] < 0, u[:, 1] + 2, u[:, 1] - 2))
        x = u * 0.8
    elif name == "moons":
        a = rng.uniform(0, np.pi, n)
        upper = rng.random(n) < 0.5
        x = np.where(upper[:, None], np.stack([np.cos(a), np.sin(a)], 1),
                     np.stack([1 - np.cos(a), 0.5 - np.sin(a)], 1))
        x = (x - [0.5, 0.25]) * 1.2 + 0.06 * rng.standard_normal((n, 2))
    elif name == "spiral":
        r = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
        x = np.stack([r * np.cos(r), r * np.sin(r)], 1) / (1.5 * np.pi) + 0.05 * rng.standard_normal((n, 2))
        x = x - [-0.09, 0.405]                              # the spiral's mean
    else:
        raise ValueError(f"unknown dataset {name!r}")
    return x.astype(np.float32)


DATASETS = ("gmm", "checkerboard", "moons", "spiral")

# -----------------------------------------------------------------------------
# The network F(x, t, s, y): an MLP on x and sinusoidal features of t and t - s.

class MLP(nn.Module):
    def __init__(self, dim=2, width=256, depth=4, num_classes=None, freqs=4):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(freqs) / 2)
        self.inp = nn.Linear(dim + 8 * freqs, width)
        self.label = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, dim)

    def forward(self, x, t, s, y=None):
        u = torch.stack([t, t - s], 1)[:, :, None] * self.freqs            # (B, 2, freqs)
        h = self.inp(torch.cat([x, u.sin().flatten(1), u.cos().flatten(1),
                                (2 * u).sin().flatten(1), (2 * u).cos().flatten(1)], 1))
        if self.label is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.label.num_embeddings - 1, device=x.device)
            h = h + self.label(y)
        for layer in self.hidden:
            h = layer(torch.nn.functional.silu(h))
        return self.out(torch.nn.functional.silu(h))

# -----------------------------------------------------------------------------
# Evaluation.

def energy_distance(a, b, max_points=4000):
    """Energy distance 2 E|a - b| - E|a - a'| - E|b - b'| between two point clouds:
    0 for identical distributions, a proper metric, no tuning knob."""
    a = torch.as_tensor(a[:max_points], dtype=torch.float64)
    b = torch.as_tensor(b[:max_points], dtype=torch.float64)
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def rmse(a, b):
    """Root mean squared Euclidean distance between matched points."""
    return float(np.sqrt(np.mean(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, 1))))


def evaluate(net, cfg, args, mixture, rng):
    """The table: each sampler's endpoint RMSE against the exact map (Gaussian mixture
    only) and energy distance to fresh data."""
    n = args.eval_points
    x1 = torch.from_numpy(rng.standard_normal((n, 2)).astype(np.float32))
    fresh = sample_data(args.dataset, n, rng, mixture)
    exact = mixture.solve(x1.numpy(), 1.0, 0.0, cfg.schedule) if args.dataset == "gmm" else None
    g = torch.Generator().manual_seed(args.seed + 1)
    samplers = {
        "SoFlow 1-NFE": lambda: soflow.sample(net, cfg, x1),
        "SoFlow 2-NFE chain": lambda: soflow.sample_chain(net, cfg, x1, steps=2),
        "SoFlow 2-NFE re-noise": lambda: soflow.sample_renoise(net, cfg, x1, steps=2, generator=g),
        **{f"Euler on v_theta, {k} steps": (lambda k=k: soflow.sample_euler(net, cfg, x1, steps=k))
           for k in (1, 2, 10, 100)},
    }
    rows, outputs = [], {}
    for name, fn in samplers.items():
        out = fn().numpy()
        outputs[name] = out
        deterministic = "re-noise" not in name     # a re-noised sample has no exact counterpart
        rows.append({
            "sampler": name,
            "nfe": 1 if "1-NFE" in name else 2 if "2-NFE" in name else int(name.split(", ")[1].split()[0]),
            "endpoint_rmse": rmse(out, exact) if exact is not None and deterministic else None,
            "energy_distance": energy_distance(out, fresh),
        })
    rows.append({"sampler": "fresh data (noise floor)", "nfe": 0, "endpoint_rmse": None,
                 "energy_distance": energy_distance(sample_data(args.dataset, n, rng, mixture), fresh)})
    return rows, x1.numpy(), outputs, exact


def format_table(rows):
    lines = [f"{'sampler':<28} {'NFE':>4} {'endpoint RMSE':>14} {'energy dist.':>13}"]
    for r in rows:
        e = "-" if r["endpoint_rmse"] is None else f"{r['endpoint_rmse']:.4f}"
        lines.append(f"{r['sampler']:<28} {r['nfe']:>4} {e:>14} {r['energy_distance']:>13.4f}")
    return "\n".join(lines)

# -----------------------------------------------------------------------------
# The figure.

def draw(path, net, cfg, args, mixture, data, x1, outputs, losses):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = 3.0
    fig, ax = plt.subplots(2, 3, figsize=(15, 10))
    ax = ax.ravel()
    def scatter(a, pts, title, color):
        a.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4, color=color)
        a.set_title(title); a.set_xlim(-lim, lim); a.set_ylim(-lim, lim); a.set_aspect("equal")
    scatter(ax[0], data, f"data ({args.dataset})", "tab:blue")
    scatter(ax[1], outputs["SoFlow 1-NFE"], "SoFlow, 1 NFE: f(x1, 1, 0)", "tab:red")
    scatter(ax[2], outputs["SoFlow 2-NFE chain"], "SoFlow, 2 NFE: f(f(x1, 1, 1/2), 1/2, 0)", "tab:purple")

    # Solution trajectories s -> f(x1, 1, s) of a fan of noise points, over the exact ones.
    a = ax[3]
    fan = x1[:24]
    s_grid = np.linspace(1, 0, 41)
    learned = soflow.trajectory(net, cfg, torch.from_numpy(fan), s_grid).numpy()
    if args.dataset == "gmm":
        ref = mixture.solve(fan, 1.0, 0.0, cfg.schedule, s_eval=s_grid)
        ref_label = "exact ODE trajectory"
    else:   # no closed form: the velocity head integrated finely stands in
        ref = soflow.trajectory(net, cfg, torch.from_numpy(fan), np.linspace(1, 0, 201), "euler").numpy()[::5]
        ref_label = "Euler on v_theta, 200 steps"
    a.scatter(data[:3000, 0], data[:3000, 1], s=1, alpha=0.15, color="tab:blue")
    for i in range(len(fan)):
        a.plot(ref[:, i, 0], ref[:, i, 1], color="black", lw=2.5, alpha=0.35, label=ref_label if i == 0 else None)
        a.plot(learned[:, i, 0], learned[:, i, 1], color="tab:red", lw=1, label="learned s -> f(x1, 1, s)" if i == 0 else None)
    a.scatter(fan[:, 0], fan[:, 1], s=12, color="black", marker="x", label="x1 (noise)")
    a.scatter(learned[-1, :, 0], learned[-1, :, 1], s=12, color="tab:red", label="f(x1, 1, 0)")
    a.set_title("solution trajectories"); a.set_xlim(-lim, lim); a.set_ylim(-lim, lim); a.set_aspect("equal")
    a.legend(loc="lower left", fontsize=7)

    # The velocity head v_theta(x, t) = d/ds f(x, t, s) at s = t (Eq. 10), drawn at t = 0.25
    # over samples of x_t: -v points the way sampling moves (from t = 1 to t = 0).
    a = ax[4]
    t_mid = 0.25
    alpha, beta, _, _ = (float(c) for c in soflow.schedule(cfg.schedule, torch.tensor(t_mid)))
    xt = alpha * data[:3000] + beta * np.random.default_rng(0).standard_normal((min(3000, len(data)), 2))
    g = np.linspace(-lim, lim, 21)
    gx, gy = np.meshgrid(g, g)
    pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1)).float()
    with torch.no_grad():
        v = soflow.velocity(net, cfg, pts, torch.full((len(pts),), t_mid)).numpy()
    a.scatter(xt[:, 0], xt[:, 1], s=1, alpha=0.2, color="tab:gray", label=f"x_t, t = {t_mid}")
    a.quiver(gx, gy, -v[:, 0].reshape(gx.shape), -v[:, 1].reshape(gx.shape), np.hypot(v[:, 0], v[:, 1]),
             cmap="viridis", angles="xy")
    a.set_title(f"velocity head -v_theta(x, t={t_mid}) (sampling direction)"); a.set_aspect("equal")
    a.set_xlim(-lim, lim); a.set_ylim(-lim, lim); a.legend(loc="lower left", fontsize=7)

    a = ax[5]
    steps = np.arange(1, len(losses) + 1)
    for key, color in (("loss", "black"), ("fm_mse", "tab:blue"), ("scm_mse", "tab:red")):
        vals = np.array([row.get(key, np.nan) for row in losses], dtype=np.float64)
        if np.isfinite(vals).any():
            k = max(1, len(vals) // 100)    # smooth over ~1% of training
            smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
            a.plot(steps[k - 1:], smooth, color=color, label=key + (" (shrinks with t - l)" if key == "scm_mse" else ""))
    a.set_yscale("log"); a.set_xlabel("step"); a.set_title("training"); a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

# -----------------------------------------------------------------------------
# Baselines and the side-by-side comparison (--method, --compare). The methods' training
# code is in baselines.py; here: the same data stream, steps and MLP for each, one table.

LABELS = {"soflow": "SoFlow", "meanflow": "MeanFlow", "direct": "Direct Models",
          "fgm": "FGM", "fm": "flow matching"}


def train_method(args, name, cfg, mixture):
    """Train one method (baselines.build) for args.steps iterations on the data stream of
    args.seed: every method sees the same batches. Returns (method, logs, seconds)."""
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    make_net = lambda: MLP(width=args.width, depth=args.depth)
    method = baselines.build(name, make_net, args.steps, args.lr, cfg if name == "soflow" else None)
    logs = []
    t0 = time.time()
    for step in tqdm(range(args.steps), desc=f"{LABELS[name]} on {args.dataset}", mininterval=0.5):
        logs.append(method.step(torch.from_numpy(sample_data(args.dataset, args.batch, rng, mixture)), step))
    seconds = time.time() - t0
    for net in method.nets.values():
        net.eval()
    return method, logs, seconds


def compare_table(methods, x1, exact, fresh):
    """Per method: endpoint RMSE against the exact solution map (Gaussian mixture only) and
    energy distance to fresh data, for each of its samplers (by NFE)."""
    rows = []
    for name, (method, _, seconds) in methods.items():
        nfe = {}
        for n, sampler in method.samplers.items():
            out = sampler(torch.from_numpy(x1)).numpy()
            nfe[n] = {"endpoint_rmse": rmse(out, exact) if exact is not None else None,
                      "energy_distance": energy_distance(out, fresh), "samples": out}
        rows.append({"method": name, "label": LABELS[name], "train_seconds": seconds, "nfe": nfe,
                     "networks": len(method.nets),
                     "parameters": sum(p.numel() for net in method.nets.values() for p in net.parameters())})
    return rows


def format_compare(rows, reference):
    f = lambda v: "-" if v is None else f"{v:.4f}"
    lines = [f"{'method':<16} {'1-NFE RMSE':>11} {'1-NFE energy':>13} {'2-NFE RMSE':>11} {'2-NFE energy':>13} "
             f"{'train s':>8} {'nets':>5} {'params':>8}"]
    for r in rows:
        one, two = r["nfe"][1], r["nfe"].get(2, {})
        lines.append(f"{r['label']:<16} {f(one['endpoint_rmse']):>11} {f(one['energy_distance']):>13} "
                     f"{f(two.get('endpoint_rmse')):>11} {f(two.get('energy_distance')):>13} "
                     f"{r['train_seconds']:>8.1f} {r['networks']:>5} {r['parameters']:>8}")
    for name, (e, d) in reference.items():
        lines.append(f"{name:<30} {'endpoint RMSE':>13} {f(e):>8}   energy {f(d)}")
    return "\n".join(lines)


def draw_compare(path, rows, methods, args, mixture, data, x1, exact):
    """A column per method: its 1-NFE samples (top) and its learned trajectories from noise
    over the exact ones (bottom) where it has them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim, fan = 3.0, x1[:24]
    s_grid = np.linspace(1, 0, 41)
    ref = mixture.solve(fan, 1.0, 0.0, s_eval=s_grid) if args.dataset == "gmm" else None
    fig, ax = plt.subplots(2, len(rows) + 1, figsize=(3.6 * (len(rows) + 1), 7.4), squeeze=False)
    for a in ax.ravel():
        a.set_xlim(-lim, lim); a.set_ylim(-lim, lim); a.set_aspect("equal"); a.set_xticks([]); a.set_yticks([])
    ax[0, 0].scatter(data[:, 0], data[:, 1], s=2, alpha=0.4, color="tab:blue")
    ax[0, 0].set_title(f"data ({args.dataset})")
    if exact is not None:
        ax[1, 0].scatter(exact[:, 0], exact[:, 1], s=2, alpha=0.4, color="tab:gray")
        for i in range(len(fan)):
            ax[1, 0].plot(ref[:, i, 0], ref[:, i, 1], color="black", lw=1)
        ax[1, 0].set_title("exact ODE map and trajectories")
    for j, r in enumerate(rows, start=1):
        method = methods[r["method"]][0]
        one = r["nfe"][1]
        ax[0, j].scatter(one["samples"][:, 0], one["samples"][:, 1], s=2, alpha=0.4, color="tab:red")
        err = "" if one["endpoint_rmse"] is None else f"RMSE {one['endpoint_rmse']:.3f}, "
        ax[0, j].set_title(f"{r['label']}, 1 NFE\n{err}energy {one['energy_distance']:.4f}", fontsize=9)
        a = ax[1, j]
        a.scatter(data[:2000, 0], data[:2000, 1], s=1, alpha=0.15, color="tab:blue")
        if ref is not None:
            for i in range(len(fan)):
                a.plot(ref[:, i, 0], ref[:, i, 1], color="black", lw=2.5, alpha=0.3)
        if method.trajectory is not None:
            path_ = method.trajectory(torch.from_numpy(fan), s_grid).numpy()
            for i in range(len(fan)):
                a.plot(path_[:, i, 0], path_[:, i, 1], color="tab:red", lw=1)
            what = "Euler paths, 40 steps" if r["method"] == "fm" else "learned paths from noise"
            a.set_title(f"{r['label']}: {what}", fontsize=9)
        else:   # a one-step generator has no path: draw noise -> sample
            out = one["samples"][:len(fan)]
            for i in range(len(fan)):
                a.plot([fan[i, 0], out[i, 0]], [fan[i, 1], out[i, 1]], color="tab:red", lw=1, ls="--")
            a.set_title(f"{r['label']}: noise -> sample (no path)", fontsize=9)
        a.scatter(fan[:, 0], fan[:, 1], s=10, color="black", marker="x")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def compare(args, cfg, names):
    """Train each named method on the same data, steps and MLP; print and save the table
    (compare.json or results_NAME.json) and the figure (compare.png or toy2d_NAME.png)."""
    mixture = default_mixture()
    methods = {name: train_method(args, name, cfg, mixture) for name in names}
    rng = np.random.default_rng(args.seed + 1)           # the same evaluation points for every method
    x1 = rng.standard_normal((args.eval_points, 2)).astype(np.float32)
    fresh = sample_data(args.dataset, args.eval_points, rng, mixture)
    exact = mixture.solve(x1, 1.0, 0.0) if args.dataset == "gmm" else None
    rows = compare_table(methods, x1, exact, fresh)
    reference = {"fresh data (noise floor)": (None, energy_distance(sample_data(args.dataset, args.eval_points, rng, mixture), fresh))}
    if exact is not None:
        reference["exact ODE map"] = (0.0, energy_distance(exact, fresh))
    if "fm" in methods:
        fm100 = next(r for r in rows if r["method"] == "fm")["nfe"][100]
        reference["flow matching, 100 Euler steps"] = (fm100["endpoint_rmse"], fm100["energy_distance"])
    table = format_compare(rows, reference)
    print(table)
    stem = "compare" if len(names) > 1 else f"toy2d_{names[0]}"
    draw_compare(os.path.join(args.out, f"{stem}.png"), rows, methods, args, mixture,
                 sample_data(args.dataset, 4000, rng, mixture), x1, exact)
    for r in rows:
        for v in r["nfe"].values():
            v.pop("samples")
    out = "compare.json" if len(names) > 1 else f"results_{names[0]}.json"
    with open(os.path.join(args.out, out), "w") as f:
        json.dump({"dataset": args.dataset, "rows": rows, "reference": {k: {"endpoint_rmse": e, "energy_distance": d}
                   for k, (e, d) in reference.items()}, "table": table, "args": vars(args),
                   "configs": {n: dataclasses.asdict(m.config) for n, (m, _, _) in methods.items()}}, f, indent=2)
    print(f"wrote {args.out}/{stem}.png, {out}")
    return rows

# -----------------------------------------------------------------------------
# Command line: toy knobs, then every field of SoFlowConfig as --field.

def toy_defaults(steps):
    """The method's settings for the toy (unconditional; K = the number of steps)."""
    # Wider time distributions than ImageNet's (sigma 1.6 instead of 0.8-1.0): in a
    # few thousand steps the pairs (t near 1, s near 0) that one-step sampling needs
    # must be seen often. lambda = 0.25 and p = 0.5 as the paper's CIFAR-10 setting.
    return soflow.SoFlowConfig(num_classes=None, label_drop=0.0, guidance_scale=1.0, guidance_mix=1.0,
                               mu_fm=0.0, sigma_fm=1.6, mu_t=0.5, sigma_t=1.6, mu_s=-0.5, sigma_s=1.6,
                               fm_ratio=0.25, p=0.5, eps=0.01, r_init=0.2, r_end=0.002, total_steps=steps)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="gmm", choices=DATASETS)
    p.add_argument("--steps", type=int, default=4000, help="training steps (also K of Eq. 16)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, cosine-decayed to 0")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-points", type=int, default=2000)
    p.add_argument("--out", default="out/toy2d", help="output folder")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--method", default="soflow", choices=baselines.METHODS,
                   help="the method to train; the baselines (baselines.py) use their settings baselines.TOY")
    p.add_argument("--compare", action="store_true",
                   help="train every method on the same data, steps and MLP; one table and one figure")
    g = p.add_argument_group("SoFlow method (soflow.SoFlowConfig)")
    base = toy_defaults(4000)
    for f in dataclasses.fields(soflow.SoFlowConfig):
        if f.name in ("total_steps", "num_classes", "label_drop", "guidance_scale", "guidance_mix", "guidance_t_max", "guidance_decay_k"):
            continue    # K is --steps; the toy is unconditional
        kind = type(getattr(base, f.name))
        choices = {"schedule": soflow.SCHEDULE_NAMES, "param": soflow.PARAM_NAMES,
                   "r_schedule": soflow.R_SCHEDULES}.get(f.name)
        flag = "--" + f.name.replace("_", "-")
        g.add_argument(flag, dest=f.name, type=kind, default=getattr(base, f.name), choices=choices,
                       help="lambda of the paper" if f.name == "fm_ratio" else None)
    args = p.parse_args(argv)
    for name in ("steps", "batch", "width", "depth", "eval_points"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0:
        p.error("--lr must be > 0")
    return args


def make_config(args):
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(soflow.SoFlowConfig) if hasattr(args, f.name)}
    try:
        return toy_defaults(args.steps).replace(**overrides)
    except ValueError as e:
        raise SystemExit(f"error: {e}")


def train(args, cfg, mixture, rng, log_every=0):
    """Train the MLP with the SoFlow loss; returns the network and per-step logs."""
    torch.manual_seed(args.seed)
    net = MLP(width=args.width, depth=args.depth)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    losses = []
    bar = tqdm(range(args.steps), desc=f"SoFlow on {args.dataset}", disable=log_every < 0, mininterval=0.5)
    for step in bar:
        x0 = torch.from_numpy(sample_data(args.dataset, args.batch, rng, mixture))
        loss, logs = soflow.soflow_loss(net, cfg, x0, step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append({k: float(v) for k, v in logs.items()})
        if step % 100 == 0:
            bar.set_postfix(loss=f"{losses[-1]['loss']:.4f}", r=f"{soflow.r_at(cfg, step):.4f}")
    net.eval()
    return net, losses


def main(argv=None):
    args = parse_args(argv)
    cfg = make_config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    if args.compare or args.method != "soflow":
        return compare(args, cfg, baselines.METHODS if args.compare else (args.method,))
    rng = np.random.default_rng(args.seed)
    mixture = default_mixture()
    t0 = time.time()
    net, losses = train(args, cfg, mixture, rng)
    train_s = time.time() - t0
    rows, x1, outputs, exact = evaluate(net, cfg, args, mixture, rng)
    data = sample_data(args.dataset, 4000, rng, mixture)
    draw(os.path.join(args.out, "toy2d.png"), net, cfg, args, mixture, data, x1, outputs, losses)
    total_s = time.time() - t0
    table = format_table(rows)
    print(table)
    print(f"train {train_s:.1f} s, total {total_s:.1f} s ({torch.get_num_threads()} threads)")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"dataset": args.dataset, "rows": rows, "train_seconds": train_s, "total_seconds": total_s,
                   "args": vars(args), "config": cfg.to_dict()}, f, indent=2)
    np.savez(os.path.join(args.out, "samples.npz"), noise=x1, one_nfe=outputs["SoFlow 1-NFE"],
             exact=exact if exact is not None else np.zeros((0, 2)),
             means=mixture.means, std=mixture.std, weights=mixture.weights)
    print(f"wrote {args.out}/toy2d.png, results.json, samples.npz")
    return rows


if __name__ == "__main__":
    main()
