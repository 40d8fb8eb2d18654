"""
SoFlow: Solution Flow Models (Luo, Yuan, Liu, arXiv 2512.15657), the method in one file.

A network F(x, t, s, y) becomes a model of the *solution function* f(x_t, t, s) of the flow-matching
ODE (Eq. 5), the point at time s of the trajectory through x_t at time t. Noise is at t = 1, data at
t = 0: one evaluation f(x1, 1, 0) is a sample. Two losses train it without Jacobian-vector products
(Sec. 4.2): flow matching on the s-derivative of f at s = t, a velocity (Eq. 10-12), and solution
consistency (Eq. 14, 15) with a gradient-free f(x_l, l, s) a little further along the trajectory.
Guidance is baked in at training (Eq. 19). A network is any module net(x, t, s, y): x (B, ...),
t and s (B,), y (B,) labels or None.
"""

import math
from dataclasses import dataclass, asdict, fields, replace

import torch

# ----------------------------------------------------------------------------------- configuration

SCHEDULE_NAMES = ("linear", "trig")                                # noising schedules
PARAM_NAMES = ("euler", "trig")                                    # parameterizations
R_SCHEDULES = ("exponential", "cosine", "linear", "constant")      # r(k, K) of Eq. 16

@dataclass(frozen=True)
class SoFlowConfig:
    """Every hyperparameter of the method, checked before any compute."""
    # noising schedule x_t = alpha(t) x0 + beta(t) x1 (Sec. 3); f = a x + b F (Sec. 4.2)
    schedule: str = "linear"        # 'linear' | 'trig'
    param: str = "euler"            # 'euler' | 'trig'
    # logit-normal time distributions: t ~ sigmoid(N(mu, sigma^2)) (Sec. 4.2)
    mu_fm: float = -0.2             # flow matching times
    sigma_fm: float = 1.0
    mu_t: float = 0.2               # consistency loss, t
    sigma_t: float = 0.8
    mu_s: float = -0.2              # consistency loss, s
    sigma_s: float = 0.8
    fm_ratio: float = 0.75          # lambda: share of the batch (and weight) of L_FM
    p: float = 1.0                  # adaptive weight exponent (Eq. 12, 15)
    eps: float = 0.01               # adaptive weight smoothing (Eq. 12, 15)
    # l = t + (s - t) r(k, K) (Eq. 16), r decays from r_init to r_end over K steps
    r_schedule: str = "exponential" # 'exponential' | 'cosine' | 'linear' | 'constant'
    r_init: float = 1 / 10
    r_end: float = 1 / 320
    total_steps: int = 400_000      # K
    time_gap: float = 1e-4          # clamps: t >= gap, s <= t - gap, l <= t - gap
    # classifier-free guidance at training time (Sec. 4.3); num_classes None = unconditional
    num_classes: int | None = 1000  # the null label is index num_classes
    label_drop: float = 0.1         # probability of replacing a label by the null label
    guidance_scale: float = 3.0     # guidance strength w (1 = no guidance)
    guidance_mix: float = 0.25      # velocity mix ratio m (Eq. 19; 1 = no mixing)
    guidance_t_max: float = 0.8     # guidance decays to none above this t
    guidance_decay_k: float = 0.025 # sharpness of that decay

    def __post_init__(self):
        def check(ok, name, what):
            if not ok:
                raise ValueError(f"SoFlowConfig.{name} = {getattr(self, name)!r}: {what}")
        for name in (f.name for f in fields(self) if f.type is float):   # nan and inf: before the ranges
            check(isinstance(v := getattr(self, name), (int, float)) and math.isfinite(v), name, "must be a finite number")
        for name, names in (("schedule", SCHEDULE_NAMES), ("param", PARAM_NAMES), ("r_schedule", R_SCHEDULES)):
            check(getattr(self, name) in names, name, f"must be one of {names}")
        for name in ("sigma_fm", "sigma_t", "sigma_s", "eps", "guidance_decay_k"):
            check(getattr(self, name) > 0, name, "must be > 0")
        for name in ("r_init", "r_end", "guidance_t_max", "guidance_mix"):
            check(0 < getattr(self, name) <= 1, name, "must be in (0, 1]")
        check(0 <= self.fm_ratio <= 1, "fm_ratio", "must be in [0, 1]")
        check(self.p >= 0, "p", "must be >= 0")
        check(self.r_end <= self.r_init, "r_end", f"must be <= r_init = {self.r_init} (r decreases)")
        check(isinstance(self.total_steps, int) and self.total_steps >= 1, "total_steps", "must be an integer >= 1")
        check(0 < self.time_gap < 0.1, "time_gap", "must be in (0, 0.1)")
        check(self.num_classes is None or (isinstance(self.num_classes, int) and self.num_classes >= 1),
              "num_classes", "must be None (unconditional) or an integer >= 1")
        check(0 <= self.label_drop < 1, "label_drop", "must be in [0, 1)")
        check(self.guidance_scale >= 1, "guidance_scale", "must be >= 1 (1 means no guidance)")
        check(self.num_classes is not None or (self.guidance_scale == 1 and self.guidance_mix == 1), "guidance_scale",
              "guidance (guidance_scale != 1 or guidance_mix != 1) needs labels: set num_classes")

    @property
    def guided(self):   # whether the training targets use the model's own velocities (Eq. 19)
        return self.num_classes is not None and (self.guidance_scale != 1.0 or self.guidance_mix != 1.0)

    def to_dict(self):
        return asdict(self)

    def replace(self, **changes):
        if unknown := set(changes) - set(asdict(self)):
            raise ValueError(f"unknown SoFlowConfig field(s): {sorted(unknown)}")
        return replace(self, **changes)

# Named settings: the paper's Appendix A, and '_released' the authors' imagenet.yaml and
# cifar.yaml. The paper gives no eps: its presets take the released value of their dataset.
UNCONDITIONAL = dict(num_classes=None, label_drop=0.0, guidance_scale=1.0, guidance_mix=1.0)
PRESETS = {
    "imagenet": SoFlowConfig(),
    "imagenet_released": SoFlowConfig(mu_s=-1.0, r_end=0.002),
    "cifar10": SoFlowConfig(mu_fm=-0.4, sigma_fm=1.7, mu_t=-0.6, sigma_t=1.5, mu_s=-4.0, sigma_s=1.5, fm_ratio=0.25,
        p=0.5, eps=0.001, r_init=1 / 50, r_end=1 / 2500, total_steps=800_000, **UNCONDITIONAL),
    "cifar10_released": SoFlowConfig(mu_fm=-0.9, sigma_fm=1.6, mu_t=-0.9, sigma_t=1.6, mu_s=-4.0, sigma_s=1.6, fm_ratio=0.0,
        p=0.75, eps=0.001, r_init=1.0, r_end=0.0003125, total_steps=800_000, **UNCONDITIONAL),
}

def preset(name, **overrides):
    """A named configuration, with some fields changed: preset('imagenet', total_steps=1000)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)

def _bc(t, x):   # per-sample times (B,) shaped to broadcast against x (B, ...)
    return t.reshape(-1, *([1] * (x.ndim - 1)))

# ------------------------------------- noising schedules (Sec. 3) and parameterizations (Sec. 4.2)
# x_t = alpha(t) x0 + beta(t) x1, conditional velocity v_c = alpha'(t) x0 + beta'(t) x1.
# f = a(t, s) x + b(t, s) F, a(t, t) = 1 and b(t, t) = 0: f(x, t, t) = x by construction (Eq. 6);
# a and b depend on s - t only, their s-derivatives at s = t are constants (Eq. 10).
H = math.pi / 2
SCHEDULES = {   # name: t -> (alpha, beta, alpha', beta')
    "linear": lambda t: (1 - t, t, -torch.ones_like(t), torch.ones_like(t)),
    "trig": lambda t: (torch.cos(H * t), torch.sin(H * t), -H * torch.sin(H * t), H * torch.cos(H * t)),
}
PARAMS = {
    #          a(t, s)                                b(t, s)                                d_s a(t,t)  d_s b(t,t)
    "euler": (lambda t, s: torch.ones_like(t),        lambda t, s: s - t,                    0.0,        1.0),
    "trig":  (lambda t, s: torch.cos(H * (s - t)),    lambda t, s: torch.sin(H * (s - t)),   0.0,        H),
}

def schedule(name, t):   # (alpha, beta, alpha', beta') at times t.
    return SCHEDULES[name](t)

def interpolate(cfg, x0, x1, t):
    """The noisy point x_t and the conditional velocity v_c (Eq. 4)."""
    alpha, beta, d_alpha, d_beta = (_bc(c, x0) for c in schedule(cfg.schedule, t))
    return alpha * x0 + beta * x1, d_alpha * x0 + d_beta * x1

def coefficients(name, t, s):   # (a(t, s), b(t, s)).
    return PARAMS[name][0](t, s), PARAMS[name][1](t, s)

def velocity_coefficients(name):   # (d/ds a, d/ds b) at s = t, the velocity head's coefficients (Eq. 10)
    return PARAMS[name][2], PARAMS[name][3]

def solution(net, cfg, x, t, s, y=None, F=None):
    """The model's solution function f_theta(x, t, s) = a x + b F_theta(x, t, s); F: the
    network's output at (x, t, s, y) if already computed (then net is not called)."""
    a, b = coefficients(cfg.param, t, s)
    return _bc(a, x) * x + _bc(b, x) * (net(x, t, s, y) if F is None else F)

def velocity(net, cfg, x, t, y=None):
    """The model's velocity v_theta(x, t) = d/ds f_theta(x, t, s) at s = t (Eq. 10).
    The term b(t, t) d/ds F vanishes because b(t, t) = 0: one plain forward pass."""
    da, db = velocity_coefficients(cfg.param)
    F = net(x, t, t, y)
    return F * db if da == 0 else da * x + db * F

# --------------------------- times (Sec. 4.2, Appendix A) and guidance at training time (Sec. 4.3)

def logit_normal(n, mu, sigma, device=None, generator=None):   # sigmoid(N(mu, sigma^2)) samples, shape (n,).
    return torch.sigmoid(mu + sigma * torch.randn(n, device=device, generator=generator))

def r_at(cfg, step):
    """r(k, K) of Eq. 16, decreasing from r_init at k = 0 to r_end at k = K (Appendix A)."""
    k, r0, r1 = min(max(step, 0), cfg.total_steps) / cfg.total_steps, cfg.r_init, cfg.r_end
    return {"exponential": lambda: r0 * (r1 / r0) ** k, "cosine": lambda: r1 + (r0 - r1) * (1 + math.cos(math.pi * k)) / 2,
            "linear": lambda: r0 + (r1 - r0) * k, "constant": lambda: r1}[cfg.r_schedule]()

def fm_times(cfg, n, device=None, generator=None):   # t for the flow matching loss.
    return logit_normal(n, cfg.mu_fm, cfg.sigma_fm, device, generator)

def scm_times(cfg, n, step, device=None, generator=None):
    """(t, l, s) for the solution consistency loss, with s <= l <= t - gap and s < t."""
    t = logit_normal(n, cfg.mu_t, cfg.sigma_t, device, generator).clamp(min=cfg.time_gap)
    s = torch.minimum(logit_normal(n, cfg.mu_s, cfg.sigma_s, device, generator), t - cfg.time_gap)
    return t, torch.minimum(t + (s - t) * r_at(cfg, step), t - cfg.time_gap), s     # l of Eq. 16

def guidance_decay(cfg, t):
    """Factor on (w - 1): 1 - exp(-k d / (1 - d)), d = (1 - t) / (1 - t_max) clamped to [0, 1 - 1e-6]:
    exactly 1 for t <= guidance_t_max, falling smoothly to 0 at t = 1."""
    d = ((1 - t) / (1 - cfg.guidance_t_max)).clamp(0.0, 1 - 1e-6) if cfg.guidance_t_max < 1 else torch.full_like(t, 1 - 1e-6)
    return 1 - torch.exp(-cfg.guidance_decay_k * d / (1 - d))

def mix_velocity(cfg, t, v_c, v_uncond, v_guided):
    """v_mix of Eq. 19: m (w(t) v_c + (1 - w(t)) v_uncond) + (1 - m) v_guided, w(t) = 1 + (w - 1) decay(t)."""
    w, m = _bc(1 + (cfg.guidance_scale - 1) * guidance_decay(cfg, t), v_c), cfg.guidance_mix
    return m * (w * v_c + (1 - w) * v_uncond) + (1 - m) * v_guided

def drop_labels(cfg, y, generator=None):
    """Labels replaced by the null label (num_classes) w.p. label_drop: (labels, kept mask)."""
    keep = torch.rand(y.shape, device=y.device, generator=generator) >= cfg.label_drop
    return torch.where(keep, y, torch.full_like(y, cfg.num_classes)), keep

# ------------------------------------------------------------------------------- losses (Sec. 4.2)

def fm_loss(net, cfg, x_t, t, y, v_target, v_pred=None):
    """Flow matching loss with its adaptive weight (Eq. 11, 12); v_pred: the model's velocity at
    (x_t, t, y) if already computed. (loss, per-sample MSE, per-sample factor 1 / (MSE + eps)^p)."""
    v_pred = velocity(net, cfg, x_t, t, y) if v_pred is None else v_pred
    mse = (v_pred - v_target).square().flatten(1).mean(1)
    adaptive = 1 / (mse.detach() + cfg.eps) ** cfg.p
    return (adaptive / abs(velocity_coefficients(cfg.param)[1]) * mse).mean(), mse.detach(), adaptive

def scm_loss(net, cfg, x_t, t, l, s, y, v_target):
    """Solution consistency loss (Eq. 14, 15) in the stable form of the authors' models.py: sign(b)
    mean(F(x_t, t, s) q w), q = sg[(f(x_t, t, s) - f(x_l, l, s)) / (t - l)], w = sg[1 / (mean(q^2) + eps)^p]:
    half the gradient of Eq. 14 weighted by Eq. 15 without squaring tiny differences. The target is a
    gradient-free forward with the same dropout masks. Returns (loss, per-sample MSE, per-sample w)."""
    x_l = x_t + v_target * _bc(l - t, x_t)          # one Euler step along the trajectory (Eq. 14)
    with torch.random.fork_rng(devices=[x_t.device] if x_t.device.type == "cuda" else []):
        F = net(x_t, t, s, y)                        # the RNG state is restored on exit ...
    with torch.no_grad():                            # ... so this pass sees the same dropout
        f_l = solution(net, cfg, x_l, l, s, y)
    q = (solution(None, cfg, x_t, t, s, F=F.detach()) - f_l) / _bc(t - l, x_t)
    q2 = q.square().flatten(1).mean(1)              # = MSE / (t - l)^2
    w = 1 / (q2 + cfg.eps) ** cfg.p
    loss = (_bc(torch.sign(coefficients(cfg.param, t, s)[1]) * w, F) * F * q).flatten(1).mean(1)
    return loss.mean(), q2 * (t - l).square(), w

def fm_count(cfg, batch):   # how many samples of a batch go to flow matching: lambda B, rounded half up
    return math.floor(cfg.fm_ratio * batch + 0.5)

def forward_passes(cfg, batch):
    """(with gradient, gradient-free): images the network sees in one soflow_loss call on `batch` samples
    (labelled if cfg has classes): every sample once with gradient; gradient-free, the consistency
    targets and, with guidance, v_uncond on every sample and v_guided on the consistency part."""
    n_sc = batch - fm_count(cfg, batch)
    return batch, n_sc + (batch + n_sc if cfg.guided else 0)

def soflow_loss(net, cfg, x0, y=None, step=0, generator=None, net_kwargs=None):
    """L = lambda L_FM + (1 - lambda) L_SCM (Sec. 4.2, Algorithm 1): the first fm_count(cfg, B) samples go
    to flow matching, the rest to consistency; with labels and guidance the targets are v_mix (Eq. 19)
    where the label was kept. net_kwargs: per-sample extra network inputs {name: (B, ...)}, each call
    gets its samples' rows. Random draws in order: noise, t_fm, t, s, label dropout. (loss, logs)"""
    B, dev, n = x0.shape[0], x0.device, fm_count(cfg, x0.shape[0])
    fm, sc = slice(0, n), slice(n, B)
    def rows(index):       # the network, with the extra inputs of these samples bound
        kw = {k: v[index] for k, v in (net_kwargs or {}).items()}
        return (lambda x, t, s, y=None: net(x, t, s, y, **kw)) if kw else net
    if y is not None and cfg.num_classes is None:
        raise ValueError("labels were given but the config is unconditional (num_classes=None)")
    x1 = torch.randn(x0.shape, device=dev, dtype=x0.dtype, generator=generator)
    tdt = torch.promote_types(x0.dtype, torch.float32)      # times never in half precision
    t_fm = fm_times(cfg, n, dev, generator).to(tdt)
    t_sc, l, s = (u.to(tdt) for u in scm_times(cfg, B - n, step, dev, generator))
    t = torch.cat([t_fm, t_sc])
    x_t, v_c = interpolate(cfg, x0, x1, t)
    if y is not None:
        y, keep = drop_labels(cfg, y, generator)
    y_fm, y_sc = (None, None) if y is None else (y[fm], y[sc])
    guided = y is not None and cfg.guided
    if guided:   # one gradient-free pass: v_uncond on the batch, v_guided on the consistency part
        with torch.no_grad():
            both = torch.cat([torch.arange(B, device=dev), torch.arange(n, B, device=dev)])
            v_both = velocity(rows(both), cfg, x_t[both], torch.cat([t, t_sc]),
                              torch.cat([torch.full_like(y, cfg.num_classes), y_sc]))
    v_fm = velocity(rows(fm), cfg, x_t[fm], t_fm, y_fm) if n > 0 else None
    v_target = v_c
    if guided:   # on the flow matching part v_guided is its own prediction, detached
        v_guided = torch.cat([v_fm.detach(), v_both[B:]]) if n > 0 else v_both[B:]
        v_mix = mix_velocity(cfg, t, v_c, v_both[:B].to(v_c.dtype), v_guided.to(v_c.dtype))
        v_target = torch.where(_bc(keep, v_c), v_mix, v_c)   # dropped labels keep v_c
    logs, loss_fm, loss_sc = {}, x0.new_zeros(()), x0.new_zeros(())
    if n > 0:
        loss_fm, mse, w = fm_loss(rows(fm), cfg, x_t[fm], t_fm, y_fm, v_target[fm], v_pred=v_fm)
        logs.update(fm_mse=mse.mean(), fm_weight=w.mean())
    if n < B:
        loss_sc, mse, w = scm_loss(rows(sc), cfg, x_t[sc], t_sc, l, s, y_sc, v_target[sc])
        logs.update(scm_mse=mse.mean(), scm_weight=w.mean())
    logs["loss"] = loss = cfg.fm_ratio * loss_fm + (1 - cfg.fm_ratio) * loss_sc
    return loss, {k: v.detach() for k, v in logs.items()}

# --------- samplers (Sec. 4.3; re-noising as in the authors' inference.py), from noise x1 at t = 1

def sample(net, cfg, x1, y=None):
    """One network evaluation: x0 = f_theta(x1, 1, 0)."""
    return sample_chain(net, cfg, x1, y, steps=1)

def time_grid(steps=1, times=None):
    """The times 1 = t0 > t1 > ... > tN = 0: `times` if given (checked), else `steps` equal intervals."""
    if times is None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps = {steps}: must be an integer >= 1")
    times = [float(u) for u in (torch.linspace(1, 0, steps + 1).tolist() if times is None else times)]
    if len(times) < 2 or times[0] != 1.0 or times[-1] != 0.0 or any(a <= b for a, b in zip(times, times[1:])):
        raise ValueError(f"times {times}: must decrease strictly from 1 to 0")
    return times

def _times(steps, times, like):
    return [torch.full((like.shape[0],), u, device=like.device) for u in time_grid(steps, times)]

@torch.no_grad()
def sample_renoise(net, cfg, x1, y=None, steps=2, times=None, generator=None, noise=None):
    """As released: at each t_i jump to data with f(x, t_i, 0), re-noise to t_{i+1}; the last jump is
    the output. Noise from `generator`, or noise[i] for t_{i+1} (so it can depend on each sample alone)."""
    ts, x = _times(steps, times, x1), x1
    if noise is not None and len(noise) < len(ts) - 2:
        raise ValueError(f"{len(ts) - 2} re-noising steps need as many noise tensors, got {len(noise)}")
    for i, t in enumerate(ts[:-1]):
        x0 = solution(net, cfg, x, t, torch.zeros_like(t), y)
        if i < len(ts) - 2:
            eps = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) if noise is None else noise[i]
            x, _ = interpolate(cfg, x0, eps.to(x0.dtype), ts[i + 1])     # alpha x0 + beta eps
    return x0

@torch.no_grad()
def sample_chain(net, cfg, x1, y=None, steps=2, times=None):
    """Deterministic multi-step sampling: x <- f(x, t_i, t_{i+1}) along the ODE."""
    ts, x = _times(steps, times, x1), x1
    for t, s in zip(ts, ts[1:]):
        x = solution(net, cfg, x, t, s, y)
    return x

def _euler(net, cfg, x, ts, y):    # the states of Euler steps on the velocity head along ts
    yield x
    for t, s in zip(ts, ts[1:]):
        x = x + _bc(s - t, x) * velocity(net, cfg, x, t, y)
        yield x

@torch.no_grad()
def sample_euler(net, cfg, x1, y=None, steps=100, times=None):
    """Plain flow-matching sampling: Euler steps on the velocity head v_theta (Eq. 10)."""
    for x in _euler(net, cfg, x1, _times(steps, times, x1), y):
        pass
    return x

@torch.no_grad()
def trajectory(net, cfg, x1, times, kind="solution", y=None):
    """States at `times` (1 = t0 > ... > tN = 0) from noise x1, (N + 1, B, ...): kind 'solution' the
    learned map s -> f(x1, 1, s); 'euler' Euler steps on the velocity head from time to time."""
    ts = _times(None, times, x1)
    if kind == "euler":
        return torch.stack(list(_euler(net, cfg, x1, ts, y)))
    if kind == "solution":
        return torch.stack([solution(net, cfg, x1, ts[0], s, y) for s in ts])
    raise ValueError(f"kind = {kind!r}: must be 'solution' or 'euler'")
