"""
Grader of assignment 4 (classifier-free guidance at training time on a labelled toy).

    python -m pytest -q assignments/a4_cfg_toy/grader.py                          # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a4_cfg_toy/grader.py

Eq. 19 is checked against soflow.mix_velocity, the training target against soflow's
building blocks, the exact guided field against toy2d's closed-form velocities,
and the whole by training two small conditional models (w = 1 and w = 3) with the
submission's target and comparing their one-step samples, computed here, with the
exact guided ODE solved here. The functions marked @in_submission run in the
submission's process and only return values; the tests check them here (runner.py).
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.integrate import solve_ivp

import soflow
import toy2d
import toynet
from checks import close
from runner import in_submission

FUNCTIONS = ("mix_velocity", "guided_target", "exact_guided_velocity", "class_metrics")


class SmoothNet(nn.Module):
    """A small random conditional network F(x, t, s, y) on 2-D points (the same seed, the same network)."""

    def __init__(self, num_classes=4, width=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(4, width)
        self.emb = nn.Embedding(num_classes + 1, width)
        self.out = nn.Linear(width, 2)
        self.null = num_classes

    def forward(self, x, t, s, y=None):
        if y is None:
            y = torch.full((x.shape[0],), self.null, device=x.device)
        h = torch.tanh(self.inp(torch.cat([x, t[:, None], s[:, None]], 1)) + self.emb(y))
        return self.out(h)


def mixture():
    angles = np.arange(4) * np.pi / 2
    return toy2d.GaussianMixture(np.stack([np.cos(angles), np.sin(angles)], 1), 0.5, np.ones(4))

# ------------------------------------------------------------------ Eq. 19 and the target

MIXES = ((3.0, 0.25), (1.0, 1.0), (2.0, 0.5), (1.5, 1.0))


def velocities():
    return torch.randn(3, 16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@in_submission
def mixed(sub):
    v_c, v_u, v_g = velocities()
    per_sample = torch.linspace(1, 4, 16, dtype=torch.float64)[:, None]            # one strength per sample
    return [sub.mix_velocity(v_c, v_u, v_g, w, m) for w, m in MIXES], sub.mix_velocity(v_c, v_u, v_g, per_sample, 0.3)


@pytest.mark.points(2)
def test_mix_velocity_is_eq19(sub):
    got, per_sample = sub.run(mixed)
    v_c, v_u, v_g = velocities()
    for (w, m), g in zip(MIXES, got):
        cfg = soflow.SoFlowConfig(num_classes=4, guidance_scale=w, guidance_mix=m, guidance_t_max=1.0)   # no decay
        ref = soflow.mix_velocity(cfg, torch.full((16,), 0.5, dtype=torch.float64), v_c, v_u, v_g)
        close(g, ref, f"v_mix with w = {w}, m = {m}, against soflow.mix_velocity", 1e-12, 1e-12)
    w = torch.linspace(1, 4, 16, dtype=torch.float64)[:, None]
    close(per_sample, 0.3 * (w * v_c + (1 - w) * v_u) + 0.7 * v_g, "v_mix with a tensor w (one per sample), m = 0.3",
          1e-12, 1e-12)


def target_inputs(w, m):
    cfg = soflow.SoFlowConfig(num_classes=4, guidance_scale=w, guidance_mix=m, label_drop=0.3)   # decay above t = 0.8
    net = SmoothNet(seed=1).double()
    g = torch.Generator().manual_seed(1)
    B = 64
    x0, x1 = torch.randn(2, B, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0.01, 0.99, B, dtype=torch.float64)                             # many t above 0.8
    x_t, v_c = soflow.interpolate(cfg, x0, x1, t)
    y, keep = soflow.drop_labels(cfg, torch.randint(0, 4, (B,), generator=g), g)
    return net, cfg, x_t, t, y, keep, v_c


@in_submission
def target(sub, w, m):
    got = sub.guided_target(*target_inputs(w, m))
    return got, got.requires_grad


@pytest.mark.points(3)
@pytest.mark.parametrize("w,m", [(3.0, 0.25), (2.0, 1.0)])
def test_guided_target(sub, w, m):
    got, requires_grad = sub.run(target, w, m)
    net, cfg, x_t, t, y, keep, v_c = target_inputs(w, m)
    assert (~keep).any() and keep.any()
    assert got.shape == v_c.shape and got.dtype == v_c.dtype, f"target: {got.dtype} {tuple(got.shape)}"
    assert not requires_grad, "the target must carry no gradient (the model's velocities are constants)"
    with torch.no_grad():
        v_u = soflow.velocity(net, cfg, x_t, t, torch.full_like(y, 4))
        v_g = soflow.velocity(net, cfg, x_t, t, y)
    close(got[~keep], v_c[~keep], "the target of samples whose label was dropped (must be the plain v_c)", 1e-12)
    close(got[keep], soflow.mix_velocity(cfg, t, v_c, v_u, v_g)[keep],
          "the target of samples that kept their label (v_mix with w(t))", 1e-12, 1e-10)

# ------------------------------------------------------------------ the exact guided field and the metrics

def class_velocity(mix, x, t, k):
    return toy2d.GaussianMixture(mix.means[k:k + 1], mix.std, [1.0]).velocity(x, t)


def field_points():
    rng = np.random.default_rng(2)
    return rng.uniform(-2, 2, size=(40, 2)), rng.integers(0, 4, 40)


@in_submission
def fields(sub):
    x, y = field_points()
    return [sub.exact_guided_velocity(mixture(), x, t, y, w) for t in (0.2, 0.7) for w in (0.0, 1.0, 3.0)]


@pytest.mark.points(2)
def test_exact_guided_velocity(sub):
    mix, (x, y) = mixture(), field_points()
    got = iter(sub.run(fields))
    for t in (0.2, 0.7):
        v = mix.velocity(x, t)
        v_cond = np.stack([class_velocity(mix, x[i:i + 1], t, y[i])[0] for i in range(len(x))])
        for w in (0.0, 1.0, 3.0):
            close(next(got), w * v_cond + (1 - w) * v, f"the guided velocity at t = {t}, w = {w}", 1e-12, 1e-10)


def metrics(x, y, mix):
    """The three numbers of class_metrics, computed directly."""
    dens = np.stack([np.exp(-((x - mu) ** 2).sum(1) / (2 * mix.std**2)) for mu in mix.means], 1)
    d = np.stack([np.linalg.norm(x - mu, axis=1) for mu in mix.means], 1)
    n = len(y)
    return {"posterior": np.mean([dens[i, y[i]] / dens[i].sum() for i in range(n)]),
            "own_distance": np.mean(d[np.arange(n), y]),
            "other_distance": np.mean([min(d[i, k] for k in range(4) if k != y[i]) for i in range(n)])}


def metric_points():
    rng = np.random.default_rng(3)
    return rng.normal(size=(50, 2)) * 1.5, rng.integers(0, 4, 50)


@in_submission
def class_metrics(sub):
    return sub.class_metrics(*metric_points(), mixture()), sub.class_metrics(np.array([[40.0, 0.0]]), np.array([0]), mixture())


@pytest.mark.points(1)
def test_class_metrics(sub):
    got, far = sub.run(class_metrics)
    x, y = metric_points()
    for key, value in metrics(x, y, mixture()).items():
        assert key in got, f"class_metrics returns no '{key}'"
        close(got[key], value, key, 0, 1e-9)
    close(far["posterior"], 1.0, "the posterior of a point far out on its own class's side (no overflow?)", 1e-9)

# ------------------------------------------------------------------ behaviour: two training runs

def exact_guided_samples(mix, x1, y, cfg):
    """The guided ODE of Eq. 18 with w(t) = 1 + (w - 1) decay(t), solved per class with scipy."""
    out = np.zeros_like(x1)
    for k in range(4):
        idx = y == k

        def rhs(t, z):
            w = 1 + (cfg.guidance_scale - 1) * float(soflow.guidance_decay(cfg, torch.tensor([t], dtype=torch.float64)))
            z = z.reshape(-1, 2)
            return (w * class_velocity(mix, z, t, k) + (1 - w) * mix.velocity(z, t)).ravel()
        out[idx] = solve_ivp(rhs, (1.0, 0.0), x1[idx].ravel(), method="DOP853", rtol=1e-8, atol=1e-8).y[:, -1].reshape(-1, 2)
    return out


@in_submission
def trained(sub):
    """Two models trained with the submission's target (the given train_conditional); their weights."""
    models = {}
    for w in (1.0, 3.0):
        net, cfg = sub.train_conditional(mixture(), w, 0.25, steps=300, seed=0, width=64, batch=256)
        models[w] = {"state": dict(net.state_dict()), "cfg": cfg.to_dict()}
    return models


@pytest.mark.points(3)
def test_guidance_separates_the_classes(sub, prerequisites):
    """Two models trained with the submission's target, w = 1 and w = 3 (m = 0.25), 300
    steps each. Guidance must move the one-step samples away from the other classes,
    raise p(y | x), and follow the exact guided ODE of its own w."""
    prerequisites("test_mix_velocity_is_eq19", "test_guided_target")
    models = sub.run(trained)
    mix = mixture()
    rng = np.random.default_rng(7)
    x1 = rng.standard_normal((400, 2))
    y = np.arange(400) % 4
    rmse = lambda a, b: float(np.sqrt(((a - b) ** 2).sum(1).mean()))
    samples, exact, m = {}, {}, {}
    for w in (1.0, 3.0):
        cfg = soflow.SoFlowConfig(**models[w]["cfg"])
        assert (cfg.guidance_scale, cfg.guidance_mix) == (w, 0.25), f"trained with w, m = {cfg.guidance_scale}, {cfg.guidance_mix}"
        net = toynet.MLP(width=64, depth=3, num_classes=4)
        net.load_state_dict(models[w]["state"])
        samples[w] = soflow.sample(net.eval(), cfg, torch.from_numpy(x1).float(), torch.from_numpy(y)).numpy()
        exact[w] = exact_guided_samples(mix, x1, y, cfg)
        m[w] = {k: round(float(v), 3) for k, v in metrics(samples[w], y, mix).items()}
    summary = f"one-step samples, w = 1: {m[1.0]}; w = 3: {m[3.0]}"
    assert m[3.0]["other_distance"] > m[1.0]["other_distance"] + 0.5, "guidance should push samples from the other classes; " + summary
    assert m[3.0]["posterior"] > m[1.0]["posterior"] + 0.02, "guidance should raise p(y | x); " + summary
    e = {(a, b): round(rmse(samples[a], exact[b]), 3) for a in (1.0, 3.0) for b in (1.0, 3.0)}
    msg = f"RMSE (model w, exact w): {e}"
    assert e[3.0, 3.0] < e[3.0, 1.0] - 0.3, "the w = 3 model should follow the w = 3 guided ODE; " + msg
    assert e[1.0, 1.0] < e[3.0, 1.0] - 0.3, "the w = 1 model should follow the unguided ODE; " + msg
