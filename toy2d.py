"""
SoFlow on 2-D toy data: trains on a laptop CPU in under a minute and draws what the method learns.

    python toy2d.py                          # Gaussian mixture, the default
    python toy2d.py --dataset checkerboard   # or moons, spiral
    python toy2d.py --help                   # every knob, every field of soflow.SoFlowConfig
    python toy2d.py --method meanflow        # or direct, fgm, fm: a baseline (baselines.py)
    python toy2d.py --compare --seeds 0,1,2  # all five on the same data, steps and MLP, per seed

An MLP F(x, t, s) becomes the solution function f = a x + b F of the flow-matching ODE (soflow.py). The Gaussian
mixture's velocity has a closed form, so its exact solution map is known (to scipy's ODE tolerance): one-step samples
are compared point by point with where the ODE takes the same noise. Writes to --out: toy2d.png, results.json,
samples.npz (--method NAME: toy2d_NAME.png, results_NAME.json; --compare: compare.png, compare.json).
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure       # no pyplot: no global state, no backend to choose
from scipy import integrate, special
from tqdm import tqdm

import baselines
import soflow

# -------------------------------------------------------------------------------------------- data
class GaussianMixture:
    """sum_k w_k N(mu_k, std^2 I): its flow-matching velocity has a closed form, since given x_t and k,
    (x0, x1) are jointly Gaussian and E[x0 | x_t], E[x1 | x_t] follow from Gaussian conditioning."""
    def __init__(self, means, std, weights):
        self.means, self.std = np.asarray(means, dtype=np.float64), float(std)
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
        post = special.softmax(logp, axis=1)                             # p(k | x_t)
        e_x0 = self.means[None] + (alpha * self.std**2 / var) * diff      # E[x0 | x_t, k]
        e_x1 = (beta / var) * diff                                       # E[x1 | x_t, k]
        return np.einsum("nk,nkd->nd", post, da * e_x0 + db * e_x1)

    def solve(self, x, t, s, schedule="linear", s_eval=None, rtol=1e-9, atol=1e-9):
        """The exact solution map f(x, t, s): dX/du = v(X, u) from u = t to s by scipy's adaptive
        Runge-Kutta (DOP853). With s_eval, the states at those times, (len(s_eval), N, D)."""
        x = np.asarray(x, dtype=np.float64)
        rhs = lambda u, z: self.velocity(z.reshape(x.shape), u, schedule).ravel()
        sol = integrate.solve_ivp(rhs, (t, s), x.ravel(), method="DOP853", rtol=rtol, atol=atol, t_eval=s_eval)
        if not sol.success:
            raise RuntimeError(f"ODE solver failed: {sol.message}")
        return sol.y[:, -1].reshape(x.shape) if s_eval is None else sol.y.T.reshape(len(s_eval), *x.shape)

def default_mixture():
    """Eight unequal components on a ring plus one in the middle."""
    angles = np.arange(8) * 2 * np.pi / 8
    means = np.concatenate([1.6 * np.stack([np.cos(angles), np.sin(angles)], 1), [[0.0, 0.0]]])
    return GaussianMixture(means, 0.12, np.array([2, 1, 2, 1, 2, 1, 2, 1, 3], dtype=np.float64))

DATASETS = ("gmm", "checkerboard", "moons", "spiral")

def sample_data(name, n, rng, mixture=None):
    """n points of a dataset, float32 (n, 2), scaled to roughly unit variance like the noise."""
    if name == "gmm":
        x, _ = mixture.sample(n, rng)
    elif name == "checkerboard":
        u = rng.uniform(-2, 2, size=(n, 2))                 # 4x4 board of unit cells
        cell = np.floor(u[:, 0]) + np.floor(u[:, 1])
        u[:, 1] = np.where(cell % 2 == 0, u[:, 1], np.where(u[:, 1] < 0, u[:, 1] + 2, u[:, 1] - 2))
        x = u * 0.8
    elif name == "moons":
        a, upper = rng.uniform(0, np.pi, n), rng.random(n) < 0.5
        x = np.where(upper[:, None], np.stack([np.cos(a), np.sin(a)], 1), np.stack([1 - np.cos(a), 0.5 - np.sin(a)], 1))
        x = (x - [0.5, 0.25]) * 1.2 + 0.06 * rng.standard_normal((n, 2))
    elif name == "spiral":
        r = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
        x = np.stack([r * np.cos(r), r * np.sin(r)], 1) / (1.5 * np.pi) + 0.05 * rng.standard_normal((n, 2))
        x = x - [-0.09, 0.405]                              # the spiral's mean
    else:
        raise ValueError(f"unknown dataset {name!r}")
    return x.astype(np.float32)

# ----------------------------------------------------------------------------------------- network
class MLP(torch.nn.Module):
    """F(x, t, s): an MLP on x and sinusoidal features of t and t - s; the toy is unconditional (y unused)."""
    def __init__(self, dim=2, width=256, depth=4, freqs=4):
        super().__init__()
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(freqs) / 2)
        self.inp = torch.nn.Linear(dim + 8 * freqs, width)
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth - 1))
        self.out = torch.nn.Linear(width, dim)

    def forward(self, x, t, s, y=None):
        u = torch.stack([t, t - s], 1)[:, :, None] * self.freqs            # (B, 2, freqs)
        h = self.inp(torch.cat([x] + [f(m * u).flatten(1) for m in (1, 2) for f in (torch.sin, torch.cos)], 1))
        for layer in self.hidden:
            h = layer(torch.nn.functional.silu(h))
        return self.out(torch.nn.functional.silu(h))

# -------------------------------------------------------------------------------------- evaluation
def energy_distance(a, b, max_points=4000):   # 2 E|a - b| - E|a - a'| - E|b - b'|: a metric, no knob
    a, b = (torch.as_tensor(u[:max_points], dtype=torch.float64) for u in (a, b))
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())

def rmse(a, b):   # root mean squared Euclidean distance between matched points
    return float(np.sqrt(np.mean(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, 1))))

def score(out, exact, fresh):   # endpoint RMSE against the exact map (None without one), energy distance to data
    return {"endpoint_rmse": None if exact is None else rmse(out, exact), "energy_distance": energy_distance(out, fresh)}

def evaluate(net, cfg, args, mixture, rng):
    """Every sampler scored on args.eval_points noise points: (rows, noise, samples, exact map)."""
    n, g = args.eval_points, torch.Generator().manual_seed(args.seed + 1)
    x1 = torch.from_numpy(rng.standard_normal((n, 2)).astype(np.float32))
    fresh = sample_data(args.dataset, n, rng, mixture)
    exact = mixture.solve(x1.numpy(), 1.0, 0.0, cfg.schedule) if args.dataset == "gmm" else None
    samplers = {("SoFlow 1-NFE", 1): lambda: soflow.sample(net, cfg, x1),
                ("SoFlow 2-NFE chain", 2): lambda: soflow.sample_chain(net, cfg, x1, steps=2),
                ("SoFlow 2-NFE re-noise", 2): lambda: soflow.sample_renoise(net, cfg, x1, steps=2, generator=g),
                **{(f"Euler on v_theta, {k} steps", k): (lambda k=k: soflow.sample_euler(net, cfg, x1, steps=k))
                   for k in (1, 2, 10, 100)}}
    outputs = {name: fn().numpy() for (name, _), fn in samplers.items()}   # a re-noised sample has no exact counterpart
    rows = [{"sampler": name, "nfe": nfe, **score(outputs[name], None if "re-noise" in name else exact, fresh)}
            for name, nfe in samplers]
    noise_floor = score(sample_data(args.dataset, n, rng, mixture), None, fresh)
    return rows + [{"sampler": "fresh data (noise floor)", "nfe": 0, **noise_floor}], x1.numpy(), outputs, exact

# ---------------------------------------------------------------------------------------- training
def toy_defaults(steps):
    """The method's settings for the toy (unconditional, K = the steps), measured (BENCHMARKS.md): wider time
    distributions than ImageNet's (sigma 1.6, not 0.8-1.0), so that the pairs (t near 1, s near 0) of one-step
    sampling are seen often; lambda = 0.1 and no adaptive weight (p = 0): 1 / (MSE + eps)^p would down-weight
    the points near the borders of the modes' basins, where the one-step map is steepest and errs most."""
    return soflow.SoFlowConfig(**soflow.UNCONDITIONAL, mu_fm=0.0, sigma_fm=1.6, mu_t=0.5, sigma_t=1.6, mu_s=-0.5,
                               sigma_s=1.6, fm_ratio=0.1, p=0.0, eps=0.01, r_init=0.2, r_end=0.002, total_steps=steps)

def train(args, cfg, mixture, rng, seed, name="soflow", probe=None, quiet=False):
    """Train a method (baselines.build; SoFlow with cfg) with torch seeded by seed, on rng's data stream, logging 20
    times its 1-NFE endpoint RMSE on probe = (noise, exact map): (method, per-step logs, seconds)."""
    torch.manual_seed(seed)
    method = baselines.build(name, lambda: MLP(width=args.width, depth=args.depth), args.steps, args.lr,
                             cfg if name == "soflow" else None)
    logs, t0 = [], time.time()
    for k in tqdm(range(args.steps), desc=f"{LABELS[name]} on {args.dataset}", disable=quiet, mininterval=0.5):
        logs.append(method.step(torch.from_numpy(sample_data(args.dataset, args.batch, rng, mixture)), k))
        if probe and ((k + 1) % max(1, args.steps // 20) == 0 or k + 1 == args.steps):
            logs[-1]["probe"] = rmse(method.samplers[1](probe[0]).numpy(), probe[1])
    return method, logs, time.time() - t0

# ----------------------------------------------------------------------------------------- figures
def _panel(a, title, pts=None, color=None, lim=3.0):
    if pts is not None:
        a.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4, color=color)
    a.set_title(title, fontsize=12); a.set_xlim(-lim, lim); a.set_ylim(-lim, lim); a.set_aspect("equal")

def _paths(a, title, data, fan, paths, ref, ref_label="exact ODE path"):
    """Paths from noise (red; dashed: noise -> sample) over reference paths, alike in both figures."""
    a.scatter(data[:2000, 0], data[:2000, 1], s=1, alpha=0.15, color="tab:blue")
    for i in range(len(fan)):
        if ref is not None:
            a.plot(ref[:, i, 0], ref[:, i, 1], color="black", lw=2.5, alpha=0.3, label=None if i else ref_label)
        if paths is not None:
            a.plot(paths[:, i, 0], paths[:, i, 1], color="tab:red", lw=1, ls="-" if len(paths) > 2 else "--",
                   label=None if i else "learned s -> f(x1, 1, s)")
    a.scatter(fan[:, 0], fan[:, 1], s=12, color="black", marker="x", label="x1 (noise)")
    _panel(a, title)

def draw(path, net, cfg, args, mixture, data, x1, outputs, logs):
    fig = Figure(figsize=(16, 10.5))
    ax = fig.subplots(2, 3).ravel()
    _panel(ax[0], f"data ({args.dataset})", data, "tab:blue")
    _panel(ax[1], "SoFlow, 1 NFE: f(x1, 1, 0)", outputs["SoFlow 1-NFE"], "tab:red")
    _panel(ax[2], "SoFlow, 2 NFE: f(f(x1, 1, 1/2), 1/2, 0)", outputs["SoFlow 2-NFE chain"], "tab:purple")
    # solution paths s -> f(x1, 1, s) from noise over the exact ones (no closed form: 200 Euler steps)
    fan, s_grid, gmm = x1[:24], np.linspace(1, 0, 41), args.dataset == "gmm"
    ref = (mixture.solve(fan, 1.0, 0.0, cfg.schedule, s_eval=s_grid) if gmm
           else soflow.trajectory(net, cfg, torch.from_numpy(fan), np.linspace(1, 0, 201), "euler").numpy()[::5])
    learned = soflow.trajectory(net, cfg, torch.from_numpy(fan), s_grid).numpy()
    _paths(ax[3], "solution paths from noise", data, fan, learned, ref,
           "exact ODE path" if gmm else "Euler on v_theta, 200 steps")
    ax[3].legend(loc="lower left", fontsize=8)
    # the velocity head v_theta(x, t) = d/ds f(x, t, s) at s = t (Eq. 10); -v is the way sampling moves
    alpha, beta, _, _ = (float(c) for c in soflow.schedule(cfg.schedule, torch.tensor(0.25)))
    xt = alpha * data[:3000] + beta * np.random.default_rng(0).standard_normal((min(3000, len(data)), 2))
    gx, gy = np.meshgrid(np.linspace(-3, 3, 21), np.linspace(-3, 3, 21))
    v = -soflow.velocity(net, cfg, torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32),
                         torch.full((gx.size,), 0.25)).detach().numpy()
    _panel(ax[4], "velocity head: -v_theta(x, t = 0.25), over x_t", xt, "tab:gray")
    q = ax[4].quiver(gx, gy, *v.T.reshape(2, *gx.shape), np.hypot(*v.T), cmap="viridis", angles="xy")
    fig.colorbar(q, ax=ax[4], shrink=0.75, label="|v_theta(x, t)|")
    # training: 1-NFE endpoint RMSE on fixed points (the mixture only); losses, smoothed, on a second axis
    a, b = ax[5], ax[5].twinx()
    a.plot(*zip(*([(k + 1, r["probe"]) for k, r in enumerate(logs) if "probe" in r] or [(0, np.nan)])), "o-",
           color="tab:green", lw=2, label="1-NFE endpoint RMSE, 300 fixed points")
    for key, color in (("loss", "black"), ("fm_mse", "tab:blue"), ("scm_mse", "tab:red")):
        vals, k = np.array([r.get(key, np.nan) for r in logs], dtype=np.float64), max(1, len(logs) // 100)
        b.plot(np.arange(k, len(vals) + 1), np.convolve(vals, np.ones(k) / k, "valid"), color=color, lw=0.8, alpha=0.5,
               label=key)
    a.set_xlabel("step"); a.set_ylabel("1-NFE endpoint RMSE", color="tab:green"); a.set_ylim(bottom=0)
    b.set_yscale("log"); b.set_ylabel("losses")
    a.legend(*[u + w for u, w in zip(a.get_legend_handles_labels(), b.get_legend_handles_labels())], fontsize=8)
    a.set_title("training: the one-step error falls as the model learns", fontsize=12)
    a.text(0.5, -0.2, "the losses do not show learning: fm_mse sits near its target's own variance,\nscm_mse falls "
           "because t - l shrinks with the r schedule (Eq. 16)", transform=a.transAxes, ha="center", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)

# ------------------------------------------------------------- the baselines (baselines.py): --method, --compare
LABELS = {"soflow": "SoFlow", "meanflow": "MeanFlow", "direct": "Direct Models", "fgm": "FGM", "fm": "flow matching"}

def format_compare(rows, reference):
    f = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else f"{v[0]:.4f} +- {v[1]:.4f}"
    head = ("method", "1-NFE RMSE", "1-NFE energy", "2-NFE RMSE", "2-NFE energy", "train s", "nets", "params")
    lines = [f"{head[0]:<14}" + "".join(f"{h:>17}" for h in head[1:5]) + f"{head[5]:>9}{head[6]:>5}{head[7]:>8}"]
    for r in rows:   # mean +- standard deviation over the seeds
        cells = [f(r["mean_sd"].get(n, {}).get(m)) for n in (1, 2) for m in ("endpoint_rmse", "energy_distance")]
        lines.append(f"{r['label']:<14}" + "".join(f"{c:>17}" for c in cells)
                     + f"{np.mean([u['train_seconds'] for u in r['runs']]):>9.1f}{r['networks']:>5}{r['parameters']:>8}")
    return "\n".join(lines + [f"{k:<31} endpoint RMSE {f(v['endpoint_rmse']):>16}   energy {f(v['energy_distance'])}"
                              for k, v in reference.items()])

def draw_compare(path, rows, first, args, mixture, data, x1, exact):
    """Per method (first seed): 1-NFE samples, paths from noise over the exact ones; titles: all seeds."""
    fan, s_grid = x1[:24], np.linspace(1, 0, 41)
    ref = mixture.solve(fan, 1.0, 0.0, s_eval=s_grid) if exact is not None else None
    fig = Figure(figsize=(3.9 * (len(rows) + 1), 8.4))
    ax = fig.subplots(2, len(rows) + 1, squeeze=False, subplot_kw={"xticks": [], "yticks": []})
    _panel(ax[0, 0], f"data ({args.dataset})", data, "tab:blue")
    _paths(ax[1, 0], "exact ODE map and paths", data[:0], fan, None, ref)
    _panel(ax[1, 0], "exact ODE map and paths", exact, "tab:gray")   # the exact map's samples over the paths
    for j, r in enumerate(rows, start=1):
        (method, samples), (e, d) = first[r["method"]], r["mean_sd"][1].values()
        rmse_line = "" if e is None else f"RMSE {e[0]:.3f} +- {e[1]:.3f}\n"
        _panel(ax[0, j], f"{r['label']}, 1 NFE\n{rmse_line}energy {d[0]:.4f} +- {d[1]:.4f}", samples[1], "tab:red")
        if method.trajectory is not None:
            paths = method.trajectory(torch.from_numpy(fan), s_grid).numpy()
            what = "Euler paths, 40 steps" if r["method"] == "fm" else "paths from noise"
        else:   # a one-step generator has no path: noise -> sample
            paths, what = np.stack([fan, samples[1][:len(fan)]]), "noise -> sample (no path)"
        _paths(ax[1, j], f"{r['label']}: {what}", data, fan, paths, ref)
    fig.tight_layout()
    fig.savefig(path, dpi=80)

def compare(args, cfg, names):
    """Each method trained with each seed on that seed's data stream (same steps and MLP): the table, JSON, figure."""
    mixture = default_mixture()
    rng = np.random.default_rng(args.seeds[0] + 1)          # the same evaluation points for every run
    x1 = rng.standard_normal((args.eval_points, 2)).astype(np.float32)
    fresh = sample_data(args.dataset, args.eval_points, rng, mixture)
    exact = mixture.solve(x1, 1.0, 0.0) if args.dataset == "gmm" else None
    mean_sd = lambda v: None if None in v else [float(np.mean(v)), float(np.std(v))]
    rows, first = [], {}
    for name in names:
        runs = []
        for seed in args.seeds:
            method, _, seconds = train(args, cfg, mixture, np.random.default_rng(seed), seed, name)
            samples = {n: sampler(torch.from_numpy(x1)).numpy() for n, sampler in method.samplers.items()}
            first.setdefault(name, (method, samples))
            scores = {n: score(out, exact, fresh) for n, out in samples.items()}
            runs.append({"seed": seed, "train_seconds": seconds, "nfe": scores})
        nets = first[name][0].nets.values()
        rows.append({"method": name, "label": LABELS[name], "networks": len(nets), "runs": runs,
                     "parameters": sum(p.numel() for net in nets for p in net.parameters()),
                     "mean_sd": {n: {m: mean_sd([u["nfe"][n][m] for u in runs]) for m in scores[n]} for n in scores}})
    reference = {"fresh data (noise floor)": score(sample_data(args.dataset, args.eval_points, rng, mixture), None, fresh),
                 **({} if exact is None else {"exact ODE map": score(exact, exact, fresh)}),
                 **{"flow matching, 100 Euler steps": r["mean_sd"][100] for r in rows if r["method"] == "fm"}}
    print(table := format_compare(rows, reference))
    stem, out = ("compare", "compare.json") if len(names) > 1 else (f"toy2d_{names[0]}", f"results_{names[0]}.json")
    data = sample_data(args.dataset, 4000, rng, mixture)
    draw_compare(Path(args.out, f"{stem}.png"), rows, first, args, mixture, data, x1, exact)
    Path(args.out, out).write_text(json.dumps({"dataset": args.dataset, "rows": rows, "reference": reference, "table": table,
        "args": vars(args), "configs": {n: dataclasses.asdict(first[n][0].config) for n in names}}, indent=2))
    print(f"wrote {args.out}/{stem}.png, {out}")
    return rows

# ------------------------------------------------------------------------------------ command line
def parse_args(argv=None):
    """The command line: (the toy's settings, the method's SoFlowConfig)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.error = lambda msg: p.exit(2, f"{p.prog}: error: {msg} (--help lists the options)\n")
    p.add_argument("--dataset", default="gmm", choices=DATASETS)
    p.add_argument("--steps", type=int, default=5500, help="training steps (also K of Eq. 16)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, cosine-decayed to 0")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=lambda s: [int(u) for u in s.split(",")], help="--compare: 0,1,2 say (default: --seed)")
    p.add_argument("--eval_points", type=int, default=2000)
    p.add_argument("--out", default="out/toy2d", help="output folder")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--method", default="soflow", choices=baselines.METHODS, help="the method (baselines: baselines.TOY)")
    p.add_argument("--compare", action="store_true", help="train every method on the same data, steps and MLP")
    g = p.add_argument_group("SoFlow method (soflow.SoFlowConfig; the toy is unconditional, K is --steps)")
    choices = {"schedule": soflow.SCHEDULE_NAMES, "param": soflow.PARAM_NAMES, "r_schedule": soflow.R_SCHEDULES}
    for name, value in toy_defaults(1).to_dict().items():
        if name not in ("total_steps", "guidance_t_max", "guidance_decay_k", *soflow.UNCONDITIONAL):
            g.add_argument(f"--{name}", type=type(value), default=value, choices=choices.get(name),
                           help="lambda of the paper" if name == "fm_ratio" else None)
    args = p.parse_args(argv)
    for name in ("steps", "batch", "lr", "width", "depth", "eval_points"):
        if not getattr(args, name) > 0:
            p.error(f"--{name} {getattr(args, name)}: must be > 0")
    args.seeds = args.seeds or [args.seed]
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(soflow.SoFlowConfig) if hasattr(args, f.name)}
    try:   # SoFlowConfig's own checks: one line naming the field
        return args, toy_defaults(args.steps).replace(**fields)
    except ValueError as e:
        raise SystemExit(f"error: {e}")

def main(argv=None):
    args, cfg = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.compare or args.method != "soflow":
        return compare(args, cfg, list(baselines.METHODS) if args.compare else [args.method])
    t0, rng, mixture = time.time(), np.random.default_rng(args.seed), default_mixture()
    x_probe = torch.randn(300, 2, generator=torch.Generator().manual_seed(10_000))   # the training curve's points
    probe = (x_probe, mixture.solve(x_probe.numpy(), 1.0, 0.0, cfg.schedule)) if args.dataset == "gmm" else None
    method, logs, train_s = train(args, cfg, mixture, rng, args.seed, probe=probe)
    rows, x1, outputs, exact = evaluate(net := method.nets["F"], cfg, args, mixture, rng)
    draw(Path(args.out, "toy2d.png"), net, cfg, args, mixture, sample_data(args.dataset, 4000, rng, mixture),
         x1, outputs, logs)
    total_s, f = time.time() - t0, lambda v: "-" if v is None else f"{v:.4f}"
    print("\n".join([f"{'sampler':<28} {'NFE':>4} {'endpoint RMSE':>14} {'energy dist.':>13}"] + [f"{r['sampler']:<28} "
                     f"{r['nfe']:>4} {f(r['endpoint_rmse']):>14} {f(r['energy_distance']):>13}" for r in rows]))
    print(f"train {train_s:.1f} s, total {total_s:.1f} s ({torch.get_num_threads()} threads)")
    Path(args.out, "results.json").write_text(json.dumps({"dataset": args.dataset, "rows": rows, "train_seconds": train_s,
        "total_seconds": total_s, "curve": [[k + 1, r["probe"]] for k, r in enumerate(logs) if "probe" in r],
        "args": vars(args), "config": cfg.to_dict()}, indent=2))
    np.savez(Path(args.out, "samples.npz"), noise=x1, one_nfe=outputs["SoFlow 1-NFE"], means=mixture.means,
             exact=exact if exact is not None else np.zeros((0, 2)), std=mixture.std, weights=mixture.weights)
    print(f"wrote {args.out}/toy2d.png, results.json, samples.npz")
    return rows

if __name__ == "__main__":
    main()
