"""
SoFlow: Solution Flow Models, the whole method in one file.

A network F(x, t, s, y) is turned into a model of the *solution function*
f(x_t, t, s) of the flow-matching ODE (Eq. 5): the point at time s of the ODE
trajectory that passes through x_t at time t. Noise lives at t = 1 and data at
t = 0, so one evaluation f(x1, 1, 0) turns noise into a sample.

Training needs two losses (Sec. 4.2), both free of Jacobian-vector products:
  - flow matching (Eq. 11, 12): the derivative of f in s at s = t is a velocity
    field (Eq. 10), trained like ordinary flow matching;
  - solution consistency (Eq. 14, 15): f(x_t, t, s) must agree with a
    gradient-free second evaluation f(x_l, l, s) at a slightly earlier point of
    the same trajectory, l between s and t.
Classifier-free guidance is baked in at training time (Eq. 19), so sampling
needs exactly one network evaluation per step.

Equation numbers refer to "SoFlow: Solution Flow Models for One-Step
Generative Modeling" (Luo, Yuan, Liu, arXiv 2512.15657). This file holds the
method only: no network, no data, no training loop. A network is any module
called as net(x, t, s, y): x of shape (B, ...), t and s of shape (B,), y of
shape (B,) integer labels or None for the null label.
"""

import math
from dataclasses import dataclass, asdict, replace

import torch

# -----------------------------------------------------------------------------
# Configuration: every hyperparameter of the method, checked before any compute.

SCHEDULE_NAMES = ("linear", "trig")                                # noising schedules
PARAM_NAMES = ("euler", "trig")                                    # parameterizations
R_SCHEDULES = ("exponential", "cosine", "linear", "constant")      # r(k, K) of Eq. 16

@dataclass(frozen=True)
class SoFlowConfig:
    # noising schedule x_t = alpha(t) x0 + beta(t) x1 (Sec. 3) and solution
    # parameterization f = a x + b F (Sec. 4.2)
    schedule: str = "linear"        # 'linear' | 'trig'
    param: str = "euler"            # 'euler' | 'trig'
    # logit-normal time distributions: t ~ sigmoid(N(mu, sigma^2)) (Sec. 4.2)
    mu_fm: float = -0.2             # flow matching times
    sigma_fm: float = 1.0
    mu_t: float = 0.2               # consistency loss, t
    sigma_t: float = 0.8
    mu_s: float = -0.2              # consistency loss, s
    sigma_s: float = 0.8
    # losses
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
    guidance_scale: float = 3.0              # guidance strength w (1 = no guidance)
    guidance_mix: float = 0.25             # velocity mix ratio m (Eq. 19; 1 = no mixing)
    guidance_t_max: float = 0.8          # guidance decays to none above this t
    guidance_decay_k: float = 0.025      # sharpness of that decay

    def __post_init__(self):
        def check(ok, name, what):
            if not ok:
                raise ValueError(f"SoFlowConfig.{name} = {getattr(self, name)!r}: {what}")
        check(self.schedule in SCHEDULE_NAMES, "schedule", f"must be one of {SCHEDULE_NAMES}")
        check(self.param in PARAM_NAMES, "param", f"must be one of {PARAM_NAMES}")
        check(self.r_schedule in R_SCHEDULES, "r_schedule", f"must be one of {R_SCHEDULES}")
        for name in ("mu_fm", "mu_t", "mu_s"):
            check(math.isfinite(getattr(self, name)), name, "must be a finite number")
        for name in ("sigma_fm", "sigma_t", "sigma_s"):
            check(getattr(self, name) > 0, name, "must be > 0")
        check(0.0 <= self.fm_ratio <= 1.0, "fm_ratio", "must be in [0, 1]")
        check(self.p >= 0, "p", "must be >= 0")
        check(self.eps > 0, "eps", "must be > 0")
        check(0 < self.r_init <= 1, "r_init", "must be in (0, 1]")
        check(0 < self.r_end <= 1, "r_end", "must be in (0, 1]")
        check(self.r_end <= self.r_init, "r_end", f"must be <= r_init = {self.r_init} (r decreases)")
        check(isinstance(self.total_steps, int) and self.total_steps >= 1, "total_steps", "must be an integer >= 1")
        check(0 < self.time_gap < 0.1, "time_gap", "must be in (0, 0.1)")
        check(self.num_classes is None or (isinstance(self.num_classes, int) and self.num_classes >= 1),
              "num_classes", "must be None (unconditional) or an integer >= 1")
        check(0.0 <= self.label_drop < 1.0, "label_drop", "must be in [0, 1)")
        check(self.guidance_scale >= 1.0, "guidance_scale", "must be >= 1 (1 means no guidance)")
        check(0.0 < self.guidance_mix <= 1.0, "guidance_mix", "must be in (0, 1]")
        check(0.0 < self.guidance_t_max <= 1.0, "guidance_t_max", "must be in (0, 1]")
        check(self.guidance_decay_k > 0, "guidance_decay_k", "must be > 0")
        if self.num_classes is None:
            check(self.guidance_scale == 1.0 and self.guidance_mix == 1.0, "guidance_scale",
                  "guidance (guidance_scale != 1 or guidance_mix != 1) needs labels: set num_classes")

    @property
    def guided(self):
        """Whether the training targets use the model's own velocities (Eq. 19)."""
        return self.num_classes is not None and (self.guidance_scale != 1.0 or self.guidance_mix != 1.0)

    def to_dict(self):
        return asdict(self)

    def replace(self, **changes):
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown SoFlowConfig field(s): {sorted(unknown)}")
        return replace(self, **changes)


# Named settings. 'paper' values are the paper's Appendix A; 'released' values are
# those of the authors' released configs (see SPEC section 7). The paper gives no
# eps; its presets use the released value of the same dataset.
PRESETS = {
    "imagenet": SoFlowConfig(),
    "imagenet_released": SoFlowConfig(mu_s=-1.0, r_end=0.002),
    "cifar10": SoFlowConfig(
        mu_fm=-0.4, sigma_fm=1.7, mu_t=-0.6, sigma_t=1.5, mu_s=-4.0, sigma_s=1.5,
        fm_ratio=0.25, p=0.5, eps=0.001, r_init=1 / 50, r_end=1 / 2500, total_steps=800_000,
        num_classes=None, label_drop=0.0, guidance_scale=1.0, guidance_mix=1.0),
    "cifar10_released": SoFlowConfig(
        mu_fm=-0.9, sigma_fm=1.6, mu_t=-0.9, sigma_t=1.6, mu_s=-4.0, sigma_s=1.6,
        fm_ratio=0.0, p=0.75, eps=0.001, r_init=1.0, r_end=0.0003125, total_steps=800_000,
        num_classes=None, label_drop=0.0, guidance_scale=1.0, guidance_mix=1.0),
}


def preset(name, **overrides):
    """A named configuration, with some fields changed: preset('imagenet', total_steps=1000)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def _bc(t, x):
    """Reshape per-sample times (B,) to broadcast against x (B, ...)."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))

# -----------------------------------------------------------------------------
# Noising schedules (Sec. 3): x_t = alpha(t) x0 + beta(t) x1,
# conditional velocity v_c = alpha'(t) x0 + beta'(t) x1. Data at t=0, noise at t=1.

def _linear(t):
    one = torch.ones_like(t)
    return 1 - t, t, -one, one

def _trig(t):
    h = math.pi / 2
    return torch.cos(h * t), torch.sin(h * t), -h * torch.sin(h * t), h * torch.cos(h * t)

SCHEDULES = {"linear": _linear, "trig": _trig}


def schedule(name, t):
    """(alpha, beta, alpha', beta') at times t."""
    return SCHEDULES[name](t)


def interpolate(cfg, x0, x1, t):
    """The noisy point x_t and the conditional velocity v_c (Eq. 4)."""
    alpha, beta, d_alpha, d_beta = (_bc(c, x0) for c in schedule(cfg.schedule, t))
    return alpha * x0 + beta * x1, d_alpha * x0 + d_beta * x1

# -----------------------------------------------------------------------------
# Parameterizations (Sec. 4.2): f(x, t, s) = a(t, s) x + b(t, s) F(x, t, s), with
# a(t, t) = 1 and b(t, t) = 0 so that f(x, t, t) = x holds by construction (Eq. 6).
# Both depend on s - t only; their s-derivatives at s = t are constants (Eq. 10).

PARAMS = {
    #          a(t, s)                                b(t, s)                                d_s a(t,t)  d_s b(t,t)
    "euler": (lambda t, s: torch.ones_like(t),        lambda t, s: s - t,                    0.0,        1.0),
    "trig":  (lambda t, s: torch.cos(math.pi / 2 * (s - t)), lambda t, s: torch.sin(math.pi / 2 * (s - t)), 0.0, math.pi / 2),
}


def coefficients(name, t, s):
    """(a(t, s), b(t, s))."""
    a, b, _, _ = PARAMS[name]
    return a(t, s), b(t, s)


def velocity_coefficients(name):
    """(d/ds a, d/ds b) at s = t, the coefficients of the velocity head (Eq. 10)."""
    return PARAMS[name][2], PARAMS[name][3]


def solution(net, cfg, x, t, s, y=None):
    """The model's solution function f_theta(x, t, s) = a x + b F_theta(x, t, s)."""
    a, b = coefficients(cfg.param, t, s)
    return _bc(a, x) * x + _bc(b, x) * net(x, t, s, y)


def velocity(net, cfg, x, t, y=None):
    """The model's velocity v_theta(x, t) = d/ds f_theta(x, t, s) at s = t (Eq. 10).
    The term b(t, t) d/ds F vanishes because b(t, t) = 0: one plain forward pass."""
    da, db = velocity_coefficients(cfg.param)
    F = net(x, t, t, y)
    return F * db if da == 0 else da * x + db * F

# -----------------------------------------------------------------------------
# Times (Sec. 4.2 and Appendix A).

def logit_normal(n, mu, sigma, device=None, generator=None):
    """sigmoid(N(mu, sigma^2)) samples, shape (n,)."""
    return torch.sigmoid(mu + sigma * torch.randn(n, device=device, generator=generator))


def r_at(cfg, step):
    """r(k, K) of Eq. 16, decreasing from r_init at k = 0 to r_end at k = K (Appendix A)."""
    k = min(max(step, 0), cfg.total_steps) / cfg.total_steps
    r0, r1 = cfg.r_init, cfg.r_end
    if cfg.r_schedule == "exponential":
        return r0 * (r1 / r0) ** k
    if cfg.r_schedule == "cosine":
        return r1 + (r0 - r1) * (1 + math.cos(math.pi * k)) / 2
    if cfg.r_schedule == "linear":
        return r0 + (r1 - r0) * k
    return r1  # constant


def fm_times(cfg, n, device=None, generator=None):
    """t for the flow matching loss."""
    return logit_normal(n, cfg.mu_fm, cfg.sigma_fm, device, generator)


def scm_times(cfg, n, step, device=None, generator=None):
    """(t, l, s) for the solution consistency loss, with s <= l <= t - gap and s < t."""
    gap = cfg.time_gap
    t = logit_normal(n, cfg.mu_t, cfg.sigma_t, device, generator).clamp(min=gap)
    s = torch.minimum(logit_normal(n, cfg.mu_s, cfg.sigma_s, device, generator), t - gap)
    l = torch.minimum(t + (s - t) * r_at(cfg, step), t - gap)   # Eq. 16
    return t, l, s

# -----------------------------------------------------------------------------
# Classifier-free guidance at training time (Sec. 4.3).

def guidance_decay(cfg, t):
    """Factor on (w - 1): exactly 1 for t <= guidance_t_max, falling smoothly to 0 at t = 1.
    With d = (1 - t) / (1 - t_max) clamped to [0, 1 - 1e-6]: 1 - exp(-k d / (1 - d))."""
    d = ((1 - t) / (1 - cfg.guidance_t_max)).clamp(0.0, 1 - 1e-6) if cfg.guidance_t_max < 1 else torch.full_like(t, 1 - 1e-6)
    return 1 - torch.exp(-cfg.guidance_decay_k * d / (1 - d))


def mix_velocity(cfg, t, v_c, v_uncond, v_guided):
    """v_mix of Eq. 19 with the decayed strength w(t) = 1 + (w - 1) * decay(t):
    m (w v_c + (1 - w) v_uncond) + (1 - m) v_guided."""
    w = _bc(1 + (cfg.guidance_scale - 1) * guidance_decay(cfg, t), v_c)
    m = cfg.guidance_mix
    return m * (w * v_c + (1 - w) * v_uncond) + (1 - m) * v_guided


def drop_labels(cfg, y, generator=None):
    """Replace each label by the null label (num_classes) with probability label_drop.
    Returns the new labels and the mask of the samples that kept theirs."""
    keep = torch.rand(y.shape, device=y.device, generator=generator) >= cfg.label_drop
    return torch.where(keep, y, torch.full_like(y, cfg.num_classes)), keep

# -----------------------------------------------------------------------------
# Losses.

def fm_loss(net, cfg, x_t, t, y, v_target, v_pred=None):
    """Flow matching loss with its adaptive weight (Eq. 11, 12), averaged over the batch.
    v_pred: the model's velocity at (x_t, t, y), if already computed with grad.
    Returns (loss, per-sample MSE, per-sample adaptive factor 1 / (MSE + eps)^p)."""
    if v_pred is None:
        v_pred = velocity(net, cfg, x_t, t, y)
    mse = (v_pred - v_target).square().flatten(1).mean(1)
    _, db = velocity_coefficients(cfg.param)
    adaptive = 1 / (mse.detach() + cfg.eps) ** cfg.p
    return (adaptive / abs(db) * mse).mean(), mse.detach(), adaptive


def scm_loss(net, cfg, x_t, t, l, s, y, v_target):
    """Solution consistency loss (Eq. 14, 15), in the numerically stable form of the
    released code. With q = sg[(f(x_t, t, s) - f(x_l, l, s)) / (t - l)] and
    w = sg[1 / (mean(q^2) + eps)^p] it is sign(b(t, s)) * mean(F(x_t, t, s) * q * w),
    whose gradient is half the gradient of Eq. 14 weighted by Eq. 15; dividing by
    (t - l) |b| once instead of squaring tiny differences keeps it accurate.
    The target f(x_l, l, s) is a second, gradient-free forward pass (no JVP), and
    both passes draw the same dropout masks. Returns (loss, per-sample MSE of
    f(x_t) - f(x_l), per-sample adaptive factor w)."""
    x_l = x_t + v_target * _bc(l - t, x_t)          # one Euler step along the trajectory (Eq. 14)
    devices = [x_t.device] if x_t.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):     # the RNG state is restored on exit ...
        F = net(x_t, t, s, y)
    with torch.no_grad():                            # ... so this pass sees the same dropout
        f_l = solution(net, cfg, x_l, t=l, s=s, y=y)
    a, b = coefficients(cfg.param, t, s)
    f_t = _bc(a, x_t) * x_t + _bc(b, x_t) * F.detach()
    dt = _bc(t - l, x_t)
    q = (f_t - f_l) / dt
    q2 = q.square().flatten(1).mean(1)              # = MSE / (t - l)^2
    w = 1 / (q2 + cfg.eps) ** cfg.p
    loss = (_bc(torch.sign(b) * w, F) * F * q).flatten(1).mean(1)
    return loss.mean(), q2 * (t - l).square(), w


def fm_count(cfg, batch):
    """How many samples of a batch go to the flow matching loss: lambda B, rounded half up."""
    return math.floor(cfg.fm_ratio * batch + 0.5)


def soflow_loss(net, cfg, x0, y=None, step=0, generator=None, net_kwargs=None):
    """The training objective L = lambda L_FM + (1 - lambda) L_SCM (Sec. 4.2, Algorithm 1).

    The first fm_count(cfg, B) samples of the batch go to the flow matching loss,
    the rest to the solution consistency loss. With labels and guidance on, the
    targets use v_mix (Eq. 19) for samples that kept their label. net_kwargs holds
    per-sample extra inputs of the network, {name: tensor (B, ...)} (the U-Net's
    augmentation labels, say): each network call gets the rows of its samples.
    Returns the scalar to backpropagate and a dict of detached figures for logging.
    """
    B = x0.shape[0]
    n_fm = fm_count(cfg, B)

    def rows(index):       # the network, with the extra inputs of these samples bound
        if not net_kwargs:
            return net
        kw = {k: v[index] for k, v in net_kwargs.items()}
        return lambda x, t, s, y=None: net(x, t, s, y, **kw)

    conditional = cfg.num_classes is not None and y is not None
    if y is not None and not conditional:
        raise ValueError("labels were given but the config is unconditional (num_classes=None)")
    dev = x0.device
    x1 = torch.randn(x0.shape, device=dev, dtype=x0.dtype, generator=generator)
    tdt = torch.promote_types(x0.dtype, torch.float32)      # times never in half precision
    t_fm = fm_times(cfg, n_fm, dev, generator).to(tdt)
    t_sc, l, s = (u.to(tdt) for u in scm_times(cfg, B - n_fm, step, dev, generator))
    t = torch.cat([t_fm, t_sc])
    x_t, v_c = interpolate(cfg, x0, x1, t)
    keep = None
    if conditional:
        y, keep = drop_labels(cfg, y, generator)

    # Guidance targets. One gradient-free pass gives v_uncond for the whole batch and
    # v_guided for the consistency part; for the flow matching part v_guided is the
    # detached prediction that the loss computes anyway (same input, same label).
    v_fm = v_uncond = v_guided_sc = None
    if conditional and cfg.guided:
        with torch.no_grad():
            null = torch.full_like(y, cfg.num_classes)
            both = torch.cat([torch.arange(B, device=dev), torch.arange(n_fm, B, device=dev)])
            v_both = velocity(rows(both), cfg, x_t[both], torch.cat([t, t_sc]), torch.cat([null, y[n_fm:]]))
            v_uncond, v_guided_sc = v_both[:B], v_both[B:]
    if n_fm > 0:
        v_fm = velocity(rows(slice(0, n_fm)), cfg, x_t[:n_fm], t_fm, None if y is None else y[:n_fm])
    v_target = v_c
    if v_uncond is not None:
        v_guided = torch.cat([v_fm.detach(), v_guided_sc]) if n_fm > 0 else v_guided_sc
        v_mix = mix_velocity(cfg, t, v_c, v_uncond.to(v_c.dtype), v_guided.to(v_c.dtype))
        v_target = torch.where(_bc(keep, v_c), v_mix, v_c)   # dropped labels keep v_c

    zero = x0.new_zeros(())
    logs = {}
    loss_fm = loss_sc = zero
    if n_fm > 0:
        y_fm = None if y is None else y[:n_fm]
        loss_fm, mse, w = fm_loss(rows(slice(0, n_fm)), cfg, x_t[:n_fm], t_fm, y_fm, v_target[:n_fm], v_pred=v_fm)
        logs.update(fm_mse=mse.mean(), fm_weight=w.mean())
    if n_fm < B:
        y_sc = None if y is None else y[n_fm:]
        loss_sc, mse, w = scm_loss(rows(slice(n_fm, B)), cfg, x_t[n_fm:], t_sc, l, s, y_sc, v_target[n_fm:])
        logs.update(scm_mse=mse.mean(), scm_weight=w.mean())
    loss = cfg.fm_ratio * loss_fm + (1 - cfg.fm_ratio) * loss_sc
    logs["loss"] = loss
    return loss, {k: v.detach() for k, v in logs.items()}

# -----------------------------------------------------------------------------
# Samplers (Sec. 4.3 end, and SPEC section 6). All take the noise x1 at t = 1.

@torch.no_grad()
def sample(net, cfg, x1, y=None):
    """One network evaluation: x0 = f_theta(x1, 1, 0)."""
    ones = torch.ones(x1.shape[0], device=x1.device)
    return solution(net, cfg, x1, ones, 0 * ones, y)


def time_grid(steps=1, times=None):
    """The sampling times 1 = t0 > t1 > ... > tN = 0: `times` if given (checked), else
    `steps` equal intervals."""
    if times is None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps = {steps}: must be an integer >= 1")
        times = torch.linspace(1, 0, steps + 1).tolist()
    times = [float(u) for u in times]
    if len(times) < 2 or times[0] != 1.0 or times[-1] != 0.0 or any(a <= b for a, b in zip(times, times[1:])):
        raise ValueError(f"times {times}: must decrease strictly from 1 to 0")
    return times


def _times(steps, times, like):
    return [torch.full((like.shape[0],), u, device=like.device) for u in time_grid(steps, times)]


@torch.no_grad()
def sample_renoise(net, cfg, x1, y=None, steps=2, times=None, generator=None, noise=None):
    """Multi-step sampling as released: at each time t_i jump to data with
    f(x, t_i, 0), then re-noise to t_{i+1} with fresh noise; the last jump is the output.
    The fresh noise is drawn from `generator`, or given: noise[i] for the step to t_{i+1}
    (so that a caller can make it depend on each sample alone, not on the batch)."""
    ts = _times(steps, times, x1)
    if noise is not None and len(noise) < len(ts) - 2:
        raise ValueError(f"{len(ts) - 2} re-noising steps need as many noise tensors, got {len(noise)}")
    x = x1
    for i, t in enumerate(ts[:-1]):
        x0 = solution(net, cfg, x, t, torch.zeros_like(t), y)
        if i < len(ts) - 2:
            eps = noise[i] if noise is not None else torch.randn(x.shape, device=x.device, dtype=x.dtype,
                                                                 generator=generator)
            x, _ = interpolate(cfg, x0, eps.to(x0.dtype), ts[i + 1])     # alpha x0 + beta eps
    return x0


@torch.no_grad()
def sample_chain(net, cfg, x1, y=None, steps=2, times=None):
    """Deterministic multi-step sampling: x <- f(x, t_i, t_{i+1}) along the ODE."""
    ts = _times(steps, times, x1)
    x = x1
    for t, s in zip(ts, ts[1:]):
        x = solution(net, cfg, x, t, s, y)
    return x


@torch.no_grad()
def sample_euler(net, cfg, x1, y=None, steps=100, times=None):
    """Plain flow-matching sampling: Euler steps on the velocity head v_theta (Eq. 10)."""
    ts = _times(steps, times, x1)
    x = x1
    for t, s in zip(ts, ts[1:]):
        x = x + _bc(s - t, x) * velocity(net, cfg, x, t, y)
    return x


def forward_passes(cfg, batch):
    """(images seen with gradient, images seen without) by the network in one soflow_loss call."""
    n_sc = batch - fm_count(cfg, batch)
    return batch, n_sc + ((batch + n_sc) if cfg.guided else 0)
