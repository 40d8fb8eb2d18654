"""
Grader of assignment 4 (classifier-free guidance at training time on a labelled toy).

    python -m pytest -q assignments/a4_cfg_toy/grader.py                          # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a4_cfg_toy/grader.py

Eq. 19 is checked against soflow.mix_velocity, the training target against soflow's
building blocks, the exact guided field against toy2d's closed-form velocities,
and the whole by training two small conditional models (w = 1 and w = 3) with the
submission's target and comparing their one-step samples with the exact guided ODE
solved here.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.integrate import solve_ivp

import soflow
import toy2d


class SmoothNet(nn.Module):
    """A small random conditional network F(x, t, s, y) on 2-D points."""

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

@pytest.mark.points(2)
def test_mix_velocity_is_eq19(sub):
    g = torch.Generator().manual_seed(0)
    v_c, v_u, v_g = torch.randn(3, 16, 2, generator=g, dtype=torch.float64)
    for w, m in ((3.0, 0.25), (1.0, 1.0), (2.0, 0.5), (1.5, 1.0)):
        got = sub.mix_velocity(v_c, v_u, v_g, w, m)
        cfg = soflow.SoFlowConfig(num_classes=4, guidance_scale=w, guidance_mix=m, guidance_t_max=1.0)   # no decay: w(t) = w
        ref = soflow.mix_velocity(cfg, torch.full((16,), 0.5, dtype=torch.float64), v_c, v_u, v_g)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sub.mix_velocity(v_c, v_u, v_g, 1.0, 1.0), v_c)       # no guidance: v_c
    w = torch.linspace(1, 4, 16, dtype=torch.float64)[:, None]                         # per-sample strengths
    torch.testing.assert_close(sub.mix_velocity(v_c, v_u, v_g, w, 0.3),
                               0.3 * (w * v_c + (1 - w) * v_u) + 0.7 * v_g, rtol=1e-12, atol=1e-12)


@pytest.mark.points(3)
@pytest.mark.parametrize("w,m", [(3.0, 0.25), (2.0, 1.0)])
def test_guided_target(sub, w, m):
    cfg = soflow.SoFlowConfig(num_classes=4, guidance_scale=w, guidance_mix=m, label_drop=0.3)      # decay above t = 0.8
    net = SmoothNet(seed=1).double()
    g = torch.Generator().manual_seed(1)
    B = 64
    x0, x1 = torch.randn(2, B, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0.01, 0.99, B, dtype=torch.float64)                            # many t above 0.8
    x_t, v_c = soflow.interpolate(cfg, x0, x1, t)
    y, keep = soflow.drop_labels(cfg, torch.randint(0, 4, (B,), generator=g), g)
    assert (~keep).any() and keep.any()
    got = sub.guided_target(net, cfg, x_t, t, y, keep, v_c)
    assert got.shape == v_c.shape and got.dtype == v_c.dtype
    assert not got.requires_grad, "the target must carry no gradient (the model's velocities are constants)"
    null = torch.full_like(y, 4)
    v_u = soflow.velocity(net, cfg, x_t, t, null).detach()
    v_g = soflow.velocity(net, cfg, x_t, t, y).detach()
    ref = torch.where(keep[:, None], soflow.mix_velocity(cfg, t, v_c, v_u, v_g), v_c)
    torch.testing.assert_close(got[~keep], v_c[~keep], msg="dropped labels must keep the plain v_c")
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-10, atol=1e-12)

# ------------------------------------------------------------------ the exact guided field and the metrics

def class_velocity(mix, x, t, k):
    return toy2d.GaussianMixture(mix.means[k:k + 1], mix.std, [1.0]).velocity(x, t)


@pytest.mark.points(2)
def test_exact_guided_velocity(sub):
    mix = mixture()
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, size=(40, 2))
    y = rng.integers(0, 4, 40)
    for t in (0.2, 0.7):
        v = mix.velocity(x, t)
        v_cond = np.stack([class_velocity(mix, x[i:i + 1], t, y[i])[0] for i in range(len(x))])
        for w in (0.0, 1.0, 3.0):
            got = sub.exact_guided_velocity(mix, x, t, y, w)
            np.testing.assert_allclose(got, w * v_cond + (1 - w) * v, rtol=1e-10, atol=1e-12,
                                       err_msg=f"t = {t}, w = {w}")


@pytest.mark.points(1)
def test_class_metrics(sub):
    mix = mixture()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 2)) * 1.5
    y = rng.integers(0, 4, 50)
    got = sub.class_metrics(x, y, mix)
    dens = np.stack([np.exp(-((x - mu) ** 2).sum(1) / (2 * 0.25)) for mu in mix.means], 1)
    d = np.stack([np.linalg.norm(x - mu, axis=1) for mu in mix.means], 1)
    post = [dens[i, y[i]] / dens[i].sum() for i in range(50)]
    other = [min(d[i, k] for k in range(4) if k != y[i]) for i in range(50)]
    assert set(got) >= {"posterior", "own_distance", "other_distance"}
    assert got["posterior"] == pytest.approx(np.mean(post), rel=1e-9)
    assert got["own_distance"] == pytest.approx(np.mean(d[np.arange(50), y]), rel=1e-9)
    assert got["other_distance"] == pytest.approx(np.mean(other), rel=1e-9)
    far = sub.class_metrics(np.array([[40.0, 0.0]]), np.array([0]), mix)             # no overflow far away
    assert far["posterior"] == pytest.approx(1.0)

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


@pytest.mark.points(3)
def test_guidance_separates_the_classes(sub, prerequisites):
    """Two models trained with the submission's target, w = 1 and w = 3 (m = 0.25), 300
    steps each. Guidance must move the one-step samples away from the other classes,
    raise p(y | x), and follow the exact guided ODE of its own w."""
    prerequisites("test_mix_velocity_is_eq19", "test_guided_target")
    mix = mixture()
    rng = np.random.default_rng(7)
    x1 = rng.standard_normal((400, 2))
    y = np.arange(400) % 4
    rmse = lambda a, b: float(np.sqrt(((a - b) ** 2).sum(1).mean()))
    samples, exact, metrics = {}, {}, {}
    for w in (1.0, 3.0):
        net, cfg = sub.train_conditional(mix, w, 0.25, steps=300, seed=0, width=64, batch=256)
        assert (cfg.guidance_scale, cfg.guidance_mix) == (w, 0.25)
        samples[w] = soflow.sample(net, cfg, torch.from_numpy(x1).float(), torch.from_numpy(y)).numpy()
        exact[w] = exact_guided_samples(mix, x1, y, cfg)
        metrics[w] = sub.class_metrics(samples[w], y, mix)
    summary = f"w = 1: {metrics[1.0]}, w = 3: {metrics[3.0]}"
    assert metrics[3.0]["other_distance"] > metrics[1.0]["other_distance"] + 0.5, summary
    assert metrics[3.0]["posterior"] > metrics[1.0]["posterior"] + 0.02, summary
    e = {(a, b): rmse(samples[a], exact[b]) for a in (1.0, 3.0) for b in (1.0, 3.0)}
    msg = f"RMSE (model w, exact w): {e}"
    assert e[3.0, 3.0] < e[3.0, 1.0] - 0.3, "the w = 3 model should follow the w = 3 guided ODE; " + msg
    assert e[1.0, 1.0] < e[3.0, 1.0] - 0.3, "the w = 1 model should follow the unguided ODE; " + msg
