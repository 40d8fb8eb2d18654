"""
The baselines, on SoFlow's footing: flow matching, MeanFlow, Direct Models and Flow
Generator Matching, each a loss on the same network interface as soflow.py,

    net(x, t, s, y=None)     x (B, ...), t and s (B,) times in [0, 1], y (B,) labels or None,

with the same time convention: noise at t = 1, data at t = 0, x_t = alpha(t) x0 + beta(t) x1.
Every loss returns (loss, logs) like soflow.soflow_loss, every method has a one-step
sampler, and the building blocks of soflow.py (schedules, interpolate, velocity, solution,
the samplers, label dropout, the guidance mix) do the work wherever they apply: each
config here has a .soflow() method returning the SoFlowConfig with which those building
blocks compute that method's quantities.

Why the interface fits all of them: with SoFlow's Euler parameterization,
f(x, t, s) = x + (s - t) F(x, t, s), and
  - F(x, t, t) is a velocity (Eq. 10 of SoFlow): flow matching trains exactly that;
  - MeanFlow's average velocity u(z_t, r, t) jumps as z_r = z_t - (t - r) u: that is f with
    F(x, t, s) = u(x, r=s, t), so MeanFlow's samplers are soflow.sample / sample_chain;
  - Direct Models' flow map phi(x0, t') = x0 + t' w(x0, t') from noise is f(x1, 1, s) with
    s = 1 - t' and F(x1, 1, s) = -w(x1, 1 - s);
  - FGM's generator is any network; here it is a flow network, like its teacher, taking
    one Euler step from noise: g(z) = z - F(z, 1, 1).

Papers and equation numbers:
  [FM]  Lipman et al., "Flow Matching for Generative Modeling" (2022).
  [MF]  Geng, Deng, Bai, Kolter, He, "Mean Flows for One-step Generative Modeling",
        arXiv 2505.13447 (2025).
  [DM]  "End-to-End Single-Step Flow Matching via Direct Models" (anonymous submission).
  [FGM] "Flow Generator Matching" (anonymous submission; Sec. 4 and Algorithm 1).

The end of the file builds each method for a training loop (its networks, one iteration of
its algorithm, its samplers), which is what `python toy2d.py --method NAME` and
`--compare` run.
"""

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch

import soflow
from soflow import _bc

METHODS = ("soflow", "meanflow", "direct", "fgm", "fm")


def _check(cfg, ok, name, what):
    if not ok:
        raise ValueError(f"{type(cfg).__name__}.{name} = {getattr(cfg, name)!r}: {what}")


def _check_common(cfg):
    _check(cfg, cfg.schedule in soflow.SCHEDULE_NAMES, "schedule", f"must be one of {soflow.SCHEDULE_NAMES}")
    _check(cfg, cfg.num_classes is None or (isinstance(cfg.num_classes, int) and cfg.num_classes >= 1),
           "num_classes", "must be None (unconditional) or an integer >= 1")
    _check(cfg, 0.0 <= cfg.label_drop < 1.0, "label_drop", "must be in [0, 1)")


def _view(cfg, **kw):
    """The SoFlowConfig whose building blocks compute this method's quantities: always the
    Euler parameterization (see the module docstring), no guidance unless given."""
    base = dict(schedule=cfg.schedule, param="euler", num_classes=cfg.num_classes,
                label_drop=cfg.label_drop, guidance_scale=1.0, guidance_mix=1.0)
    return soflow.SoFlowConfig(**{**base, **kw})


def _labels(cfg, y, generator):
    """Label dropout (to the null label) as in SoFlow; (labels, kept mask or None)."""
    if y is None:
        return None, None
    if cfg.num_classes is None:
        raise ValueError("labels were given but the config is unconditional (num_classes=None)")
    return soflow.drop_labels(_view(cfg), y, generator)


def _mse(a, b):
    """Per-sample mean over the data dimensions of (a - b)^2, shape (B,)."""
    return (a - b).square().flatten(1).mean(1)


@contextlib.contextmanager
def frozen(*nets):
    """Within the block, the networks' parameters take no gradient (requires_grad off, then
    restored): what "freeze psi, update theta" means in FGM's Algorithm 1. Graphs built
    inside never reach these parameters, also when backward runs after the block."""
    params = [p for net in nets for p in net.parameters()]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in zip(params, saved):
            p.requires_grad_(r)

# -----------------------------------------------------------------------------
# Flow matching [FM]: regress the conditional velocity. It is SoFlow's flow matching loss
# (Eq. 11) without the adaptive weight (p = 0), so soflow.fm_loss computes it.
# Time convention: [FM]'s is ours (rectified-flow form, data at 0, noise at 1).

@dataclass(frozen=True)
class FlowMatchingConfig:
    schedule: str = "linear"
    time_mu: float | None = None     # None: t ~ U(0, 1); else t ~ logit-normal(time_mu, time_sigma)
    time_sigma: float = 1.0
    num_classes: int | None = None
    label_drop: float = 0.0

    def __post_init__(self):
        _check_common(self)
        _check(self, self.time_mu is None or math.isfinite(self.time_mu), "time_mu", "must be None or finite")
        _check(self, self.time_sigma > 0, "time_sigma", "must be > 0")

    def soflow(self):
        return _view(self, p=0.0)


def _fm_times(cfg, n, device, generator):
    if cfg.time_mu is None:
        return torch.rand(n, device=device, generator=generator)
    return soflow.logit_normal(n, cfg.time_mu, cfg.time_sigma, device, generator)


def fm_loss(net, cfg, x0, y=None, generator=None):
    """L = E || v_theta(x_t, t) - (alpha' x0 + beta' x1) ||^2, the conditional flow matching
    loss ([FM] Sec. 4; [DM] Eq. 15; [FGM] Eq. 3.6), mean over the data dimensions, with
    v_theta(x, t) = net(x, t, t, y)."""
    view = cfg.soflow()
    x1 = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    t = _fm_times(cfg, x0.shape[0], x0.device, generator).to(torch.promote_types(x0.dtype, torch.float32))
    x_t, v_c = soflow.interpolate(view, x0, x1, t)
    y, _ = _labels(cfg, y, generator)
    loss, mse, _ = soflow.fm_loss(net, view, x_t, t, y, v_c)     # p = 0: the plain mean
    return loss, {"loss": loss.detach(), "fm_mse": mse.mean()}


@torch.no_grad()
def fm_sample(net, cfg, x1, y=None, steps=100):
    """Euler steps on the velocity from t = 1 to t = 0 (one NFE per step)."""
    return soflow.sample_euler(net, cfg.soflow(), x1, y, steps=steps)

# -----------------------------------------------------------------------------
# MeanFlow [MF]. The network predicts the average velocity over [r, t],
#   u(z_t, r, t) = 1/(t - r) int_r^t v(z_tau, tau) dtau                        ([MF] Eq. 3)
# and is trained on the MeanFlow identity u = v - (t - r) du/dt ([MF] Eq. 6), whose total
# derivative along the trajectory is du/dt = v d_z u + d_t u ([MF] Eq. 8): one
# Jacobian-vector product with tangent (v, 0, 1) on (z, r, t). The loss is
#   || u_theta(z_t, r, t) - sg(u_tgt) ||^2,  u_tgt = v - (t - r)(v d_z u_theta + d_t u_theta)
# ([MF] Eq. 9, 10), with an adaptive weight sg(1 / (||err||^2 + eps)^p) (Sec. 4.3).
# Time convention: [MF]'s is ours (z_t = (1 - t) x + t eps). In our interface
# u(z, r, t) = net(z, t, r): s = r, and z_r = z_t - (t - r) u is SoFlow's Euler f(z_t, t, r).

@dataclass(frozen=True)
class MeanFlowConfig:
    schedule: str = "linear"
    time_mu: float = -0.4            # t and r: two logit-normal draws, t = max, r = min ([MF] Table 1)
    time_sigma: float = 1.0
    ratio: float = 0.25              # share of the batch with r != t; the rest has r = t ([MF] Table 1)
    p: float = 1.0                   # adaptive weight exponent (Sec. 4.3)
    eps: float = 0.01                # its smoothing constant c (the default of a public JAX implementation)
    num_classes: int | None = None   # labels; the null label is index num_classes
    label_drop: float = 0.0          # 0.1 with labels ([MF] Sec. 4.2)
    # training-time guidance ([MF] Eq. 21 of Appendix B.1):
    #   v~ = omega v + kappa u(z_t, t, t | c) + (1 - omega - kappa) u(z_t, t, t | null),
    # the effective guidance scale is omega / (1 - kappa); applied for t in the interval
    omega: float = 1.0
    kappa: float = 0.0
    guidance_t_min: float = 0.0
    guidance_t_max: float = 1.0

    def __post_init__(self):
        _check_common(self)
        _check(self, math.isfinite(self.time_mu), "time_mu", "must be finite")
        _check(self, self.time_sigma > 0, "time_sigma", "must be > 0")
        _check(self, 0.0 <= self.ratio <= 1.0, "ratio", "must be in [0, 1]")
        _check(self, self.p >= 0, "p", "must be >= 0")
        _check(self, self.eps > 0, "eps", "must be > 0")
        _check(self, 0.0 <= self.kappa < 1.0, "kappa", "must be in [0, 1)")
        _check(self, self.omega / (1 - self.kappa) >= 1.0, "omega",
               f"the effective scale omega / (1 - kappa) must be >= 1 (kappa = {self.kappa})")
        _check(self, 0.0 <= self.guidance_t_min <= self.guidance_t_max <= 1.0, "guidance_t_min",
               f"need 0 <= guidance_t_min <= guidance_t_max = {self.guidance_t_max} <= 1")
        if self.num_classes is None:
            _check(self, self.omega == 1.0 and self.kappa == 0.0, "omega", "guidance needs labels: set num_classes")

    @property
    def guided(self):
        return self.num_classes is not None and (self.omega != 1.0 or self.kappa != 0.0)

    def soflow(self):
        # [MF] Eq. 21 is SoFlow's v_mix (Eq. 19) with w = omega / (1 - kappa), m = 1 - kappa;
        # guidance_t_max = 1 turns SoFlow's high-t decay off (MeanFlow uses an interval instead).
        return _view(self, guidance_scale=self.omega / (1 - self.kappa), guidance_mix=1 - self.kappa, guidance_t_max=1.0)


# The class-conditional ImageNet setting used by bench.py: the paper's time sampler, share of
# r != t and p; training-time guidance with the defaults of a public JAX implementation
# (omega = 1, kappa = 0.5: effective scale 2, over all t). Per-model values are not in SPEC.
MEANFLOW_IMAGENET = MeanFlowConfig(num_classes=1000, label_drop=0.1, omega=1.0, kappa=0.5)


def meanflow_times(cfg, n, device=None, generator=None):
    """(t, r) with r <= t: two logit-normal draws sorted; the first round((1 - ratio) n)
    samples get r = t (plain flow matching), the rest keep r < t."""
    a = soflow.logit_normal(n, cfg.time_mu, cfg.time_sigma, device, generator)
    b = soflow.logit_normal(n, cfg.time_mu, cfg.time_sigma, device, generator)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    same = torch.arange(n, device=t.device) < round((1 - cfg.ratio) * n)
    return t, torch.where(same, t, r)


def meanflow_jvp(net, z, t, r, v, y=None):
    """u_theta(z, r, t) = net(z, t, r, y) and its total derivative du/dt = v d_z u + d_t u
    ([MF] Eq. 8) in one forward-mode pass (torch.func.jvp, tangent (v, 1, 0) on (z, t, r)).
    u keeps its graph for backpropagation; needs attention that supports forward-mode
    autodiff (dit.set_attention(net, 'math'))."""
    return torch.func.jvp(lambda z_, t_, r_: net(z_, t_, r_, y), (z, t, r),
                          (v, torch.ones_like(t), torch.zeros_like(r)))


def meanflow_loss(net, cfg, x0, y=None, generator=None):
    """The MeanFlow objective ([MF] Eq. 9, 10; guidance as in Sec. 4.2 with Eq. 21) with the
    adaptive weight; the squared error is summed over the data dimensions as in [MF]."""
    view = cfg.soflow()
    B, dev = x0.shape[0], x0.device
    x1 = torch.randn(x0.shape, device=dev, dtype=x0.dtype, generator=generator)
    t, r = (u.to(torch.promote_types(x0.dtype, torch.float32)) for u in meanflow_times(cfg, B, dev, generator))
    z, v = soflow.interpolate(view, x0, x1, t)
    y, keep = _labels(cfg, y, generator)
    if y is not None and cfg.guided:
        # the target's velocity mixes in the model's own velocities u(z_t, t, t | .), gradient-free
        with torch.no_grad():
            null = torch.full_like(y, cfg.num_classes)
            v_null = soflow.velocity(net, view, z, t, null)
            v_cond = soflow.velocity(net, view, z, t, y) if cfg.kappa > 0 else torch.zeros_like(v_null)
            v_mix = soflow.mix_velocity(view, t, v, v_null.to(v.dtype), v_cond.to(v.dtype))
        on = keep & (t >= cfg.guidance_t_min) & (t <= cfg.guidance_t_max)
        v = torch.where(_bc(on, v), v_mix, v)            # dropped labels and t outside: plain v
    u, dudt = meanflow_jvp(net, z, t, r, v, y)
    u_tgt = (v - _bc(t - r, v) * dudt).detach()           # [MF] Eq. 10
    dt = torch.promote_types(u.dtype, torch.float32)        # the loss in at least fp32 (bf16 forwards)
    err = (u.to(dt) - u_tgt.to(dt)).square().flatten(1).sum(1)
    w = 1 / (err.detach() + cfg.eps) ** cfg.p              # adaptive weight (Sec. 4.3)
    loss = (w * err).mean()
    D = x0[0].numel()
    return loss, {"loss": loss.detach(), "mf_mse": (err.detach() / D).mean(), "mf_weight": w.mean(),
                  "r_neq_t": (r < t).float().mean()}


@torch.no_grad()
def meanflow_sample(net, cfg, x1, y=None, steps=1):
    """z_r = z_t - (t - r) u(z_t, r, t) over `steps` equal intervals from 1 to 0; one step
    is z_0 = z_1 - u(z_1, 0, 1). This is exactly SoFlow's chain with the Euler f."""
    view = cfg.soflow()
    if steps == 1:
        return soflow.sample(net, view, x1, y)
    return soflow.sample_chain(net, view, x1, y, steps=steps)

# -----------------------------------------------------------------------------
# Direct Models [DM]: a velocity network v_theta trained by flow matching ([DM] Eq. 15), and
# a flow map from noise phi(x0, t') = x0 + t' w(x0, t') ([DM] Eq. 4) trained by local
# velocity propagation ([DM] Eq. 13, 16):
#   w(x0, t' + d) <- (t' - d)/t' sg[w(x0, t')] + d/t' v_theta(x0 + t' sg[w(x0, t')], t').
# Time convention: [DM] integrates from noise at t' = 0 to data at t' = 1, so t' = 1 - t.
# Its velocity is ours negated (x_data - x_noise), and its residual field is w(x1, t') =
# -F(x1, 1, 1 - t'), so that phi(x1, t') = x1 + (s - 1) F(x1, 1, s) = f(x1, 1, s) at
# s = 1 - t'. Eq. 13 is linear in (w, v), so negating both leaves it unchanged:
#   F(x1, 1, t - d) <- (1 - t - d)/(1 - t) F(x1, 1, t) + d/(1 - t) v(f(x1, 1, t), t).

@dataclass(frozen=True)
class DirectConfig:
    schedule: str = "linear"
    delta: float = 0.01              # the finite-difference step ([DM] Table 5)
    num_classes: int | None = None
    label_drop: float = 0.0          # 0.1 with labels ([DM] Table 5)
    cfg_scale: float = 1.0           # guidance on v_theta inside the propagation target (see below)

    def __post_init__(self):
        _check_common(self)
        _check(self, 0 < self.delta < 0.5, "delta", "must be in (0, 0.5)")
        _check(self, self.cfg_scale >= 1.0, "cfg_scale", "must be >= 1 (1 = no guidance)")
        if self.num_classes is None:
            _check(self, self.cfg_scale == 1.0, "cfg_scale", "guidance needs labels: set num_classes")

    def soflow(self):
        return _view(self)

    def fm(self):
        """The velocity network's flow matching setting: t ~ U(0, 1) ([DM] Algorithm 1)."""
        return FlowMatchingConfig(schedule=self.schedule, num_classes=self.num_classes, label_drop=self.label_drop)


@torch.no_grad()
def direct_target(wnet, vnet, cfg, x1, t, y=None):
    """The propagation target for F(x1, 1, t - delta) of [DM] Eq. 13, in our time t (the
    paper's t' = 1 - t, t in [delta, 1 - delta]). [DM] Table 5 trains ImageNet with a guidance
    scale of 1.5 without saying where it acts; here it guides v_theta in this target (the only
    place where it can reach the one-step sampler): v = v_null + s (v_c - v_null)."""
    view = cfg.soflow()
    one = torch.ones_like(t)
    F_t = wnet(x1, one, t, y)
    a, b = soflow.coefficients(view.param, one, t)
    x_t = _bc(a, x1) * x1 + _bc(b, x1) * F_t                    # f(x1, 1, t) = x0 + t' sg[w] of [DM]
    v = soflow.velocity(vnet, view, x_t, t, y)
    if y is not None and cfg.cfg_scale != 1.0:
        v_null = soflow.velocity(vnet, view, x_t, t, torch.full_like(y, cfg.num_classes))
        v = v_null + cfg.cfg_scale * (v - v_null)
    d, tp = cfg.delta, _bc(1 - t, x1)                             # tp = the paper's t'
    return (tp - d) / tp * F_t + d / tp * v


def direct_prop_loss(wnet, vnet, cfg, x1, y=None, generator=None):
    """[DM] Eq. 16 on the flow-map network only: the target is gradient-free (stop-gradient
    on w, and v_theta is trained by its own loss). t' ~ U[delta, 1 - delta]."""
    n, d = x1.shape[0], cfg.delta
    t_dm = d + (1 - 2 * d) * torch.rand(n, device=x1.device, generator=generator)
    t = (1 - t_dm).to(torch.promote_types(x1.dtype, torch.float32))
    target = direct_target(wnet, vnet, cfg, x1, t, y)
    pred = wnet(x1, torch.ones_like(t), t - d, y)                 # F(x1, 1, t - d) = -w(x1, t' + d)
    mse = _mse(pred, target)
    return mse.mean(), mse.detach()


def direct_loss(wnet, vnet, cfg, x0, y=None, generator=None):
    """One iteration of [DM] Algorithm 1 as one scalar: L_CFM(theta) + L_prop(nu). The two
    terms touch disjoint networks, so one backward gives each its own gradient."""
    loss_v, logs_v = fm_loss(vnet, cfg.fm(), x0, y, generator)
    y_w, _ = _labels(cfg, y, generator)
    x1 = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    loss_w, mse = direct_prop_loss(wnet, vnet, cfg, x1, y_w, generator)
    loss = loss_v + loss_w
    return loss, {"loss": loss.detach(), "cfm_mse": logs_v["fm_mse"], "prop_mse": mse.mean()}


@torch.no_grad()
def direct_sample(wnet, cfg, x1, y=None):
    """x_data = x1 + w(x1, t' = 1) ([DM] Eq. 17) = f(x1, 1, 0): one NFE."""
    return soflow.sample(wnet, cfg.soflow(), x1, y)

# -----------------------------------------------------------------------------
# Flow Generator Matching [FGM]: distil a pretrained flow model u (the teacher, frozen) into
# a one-step generator g_theta with the help of an online flow model v_psi that tracks the
# flow of the generator's own samples. Algorithm 1 alternates
#   (a) psi: flow matching on generator samples, || v_psi(x_t, t) - u(x_t | x0) ||^2, x0 = g(z);
#   (b) theta: L_FGM = L1 + L2 with x0 = g_theta(z), x_t ~ q_t(x_t | x0), t ~ U(0, 1),
#       L1 = || u(x_t) - v_psi(x_t) ||^2                                     ([FGM] Eq. 4.11)
#       L2 = 2 (u(x_t) - v_psi(x_t))^T (v_psi(x_t) - u(x_t | x0))             ([FGM] Eq. 4.12)
#       with the gradient through x_t and u(x_t | x0) (both depend on theta), none into the
#       networks u and v_psi. L2's gradient equals Grad_2 of Eq. 4.5 (Theorem 4.2), L1's is
#       Grad_1 (Eq. 4.4); together, the gradient of the intractable Eq. 4.1.
# The paper drops L1 on CIFAR-10 (unstable, Sec. 5.1) and trains with L2: l1_weight = 0.
# The generator is initialised from the teacher: Sec. 5.1 builds it from the teacher network
# evaluated at a chosen time t* (Eq. 5.1); here it is the teacher's own one-step Euler map
# from noise, g(z) = z - F(z, 1, 1), a network of the same interface with the teacher's
# weights. The online model starts as the teacher too.
# Time convention: [FGM]'s is ours (data at 0, noise at 1, u(x_t | x0) = x1 - x0 for ReFlow).

@dataclass(frozen=True)
class FGMConfig:
    schedule: str = "linear"
    l1_weight: float = 0.0           # weight of L1 (Eq. 4.11); 1 gives the full gradient of Eq. 4.1
    num_classes: int | None = None
    label_drop: float = 0.0          # of the teacher's flow matching pretraining

    def __post_init__(self):
        _check_common(self)
        _check(self, self.l1_weight >= 0, "l1_weight", "must be >= 0")

    def soflow(self):
        return _view(self)

    def fm(self):
        """Flow matching as the teacher and the online model are trained: t ~ U(0, 1)."""
        return FlowMatchingConfig(schedule=self.schedule, num_classes=self.num_classes, label_drop=self.label_drop)


def fgm_generate(gen, cfg, z, y=None):
    """x0 = g_theta(z) = z - F(z, 1, 1): one Euler step of the generator's velocity head from
    t = 1 to t = 0 (differentiable; soflow.sample_euler(..., steps=1) without gradients)."""
    one = torch.ones(z.shape[0], device=z.device, dtype=torch.promote_types(z.dtype, torch.float32))
    return z - soflow.velocity(gen, cfg.soflow(), z, one, y)


def fgm_terms(gen, online, teacher, cfg, z, x1, t, y=None):
    """Per-sample L1 and L2 of [FGM] Eq. 4.11, 4.12 (mean over data dimensions) for given noise
    z (generator input), x1 (diffusion noise) and t. Gradients reach the generator only."""
    view = cfg.soflow()
    x0 = fgm_generate(gen, cfg, z, y)
    x_t, u_c = soflow.interpolate(view, x0, x1, t)        # both carry the generator's gradient
    with frozen(teacher, online):
        u = soflow.velocity(teacher, view, x_t, t, y)
        v = soflow.velocity(online, view, x_t, t, y)
    l1 = (u - v).square().flatten(1).mean(1)
    l2 = 2 * ((u - v) * (v - u_c)).flatten(1).mean(1)
    return l1, l2


def fgm_generator_loss(gen, online, teacher, cfg, z, y=None, generator=None):
    """Step (b) of [FGM] Algorithm 1: l1_weight L1 + L2, t ~ U(0, 1). Data-free: z is noise."""
    x1 = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
    t = torch.rand(z.shape[0], device=z.device, generator=generator).to(torch.promote_types(z.dtype, torch.float32))
    l1, l2 = fgm_terms(gen, online, teacher, cfg, z, x1, t, y)
    loss = (cfg.l1_weight * l1 + l2).mean()
    return loss, {"loss": loss.detach(), "fgm_l1": l1.detach().mean(), "fgm_l2": l2.detach().mean()}


def fgm_online_loss(online, gen, cfg, z, y=None, generator=None):
    """Step (a) of [FGM] Algorithm 1: flow matching of the online model on the generator's
    samples (the generator is frozen: its samples carry no gradient)."""
    with torch.no_grad():
        x0 = fgm_generate(gen, cfg, z, y)
    fm_cfg = FlowMatchingConfig(schedule=cfg.schedule, num_classes=cfg.num_classes)   # no label dropout
    loss, logs = fm_loss(online, fm_cfg, x0, y, generator)
    return loss, {"loss": loss.detach(), "online_mse": logs["fm_mse"]}


@torch.no_grad()
def fgm_sample(gen, cfg, x1, y=None):
    """One NFE: g(x1) = x1 - F(x1, 1, 1), i.e. soflow.sample_euler with one step."""
    return soflow.sample_euler(gen, cfg.soflow(), x1, y, steps=1)

# -----------------------------------------------------------------------------
# Each method ready for a training loop: its networks, one iteration of its paper's
# algorithm, its samplers. `python toy2d.py --method NAME` and `--compare` drive these.
# Every network comes from the same make_net() (same architecture and size); every
# optimizer is Adam with a cosine decay to zero over the run, as in toy2d.py.

@dataclass
class Method:
    name: str
    nets: dict                    # the networks it trains, name -> module
    step: Callable                # step(x0, k) -> dict of floats: iteration k of the algorithm
    samplers: dict                # NFE -> fn(x1) -> samples (noise x1 at t = 1)
    trajectory: Callable = None   # fn(x1, s_grid) -> states at the times s_grid, (len, N, ...)
    config: object = None


def _adam(params, lr, steps):
    """update(loss): zero the gradients, backpropagate, one Adam step, one cosine-decay step."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return update


def _floats(logs):
    return {k: float(v) for k, v in logs.items()}


def _solution_path(net, view):
    """s -> f(x1, 1, s) over a grid of s: the learned map from noise to every time."""
    @torch.no_grad()
    def path(x1, s_grid):
        one = torch.ones(x1.shape[0], device=x1.device)
        return torch.stack([soflow.solution(net, view, x1, one, torch.full_like(one, float(s))) for s in s_grid])
    return path


def _euler_path(net, view):
    """Euler on the velocity along the grid itself (one step per interval)."""
    @torch.no_grad()
    def path(x1, s_grid):
        xs = [x1]
        for t, s in zip(s_grid, s_grid[1:]):
            tt = torch.full((x1.shape[0],), float(t), device=x1.device)
            xs.append(xs[-1] + (float(s) - float(t)) * soflow.velocity(net, view, xs[-1], tt))
        return torch.stack(xs)
    return path


def _build_soflow(make_net, cfg, steps, lr):
    net = make_net()
    update = _adam(net.parameters(), lr, steps)

    def step(x0, k):
        loss, logs = soflow.soflow_loss(net, cfg, x0, step=k)
        update(loss)
        return _floats(logs)
    samplers = {1: lambda x1: soflow.sample(net, cfg, x1), 2: lambda x1: soflow.sample_chain(net, cfg, x1, steps=2)}
    return Method("soflow", {"F": net}, step, samplers, _solution_path(net, cfg), cfg)


def _build_meanflow(make_net, cfg, steps, lr):
    net = make_net()
    update = _adam(net.parameters(), lr, steps)

    def step(x0, k):
        loss, logs = meanflow_loss(net, cfg, x0)
        update(loss)
        return _floats(logs)
    samplers = {n: (lambda x1, n=n: meanflow_sample(net, cfg, x1, steps=n)) for n in (1, 2)}
    return Method("meanflow", {"u": net}, step, samplers, _solution_path(net, cfg.soflow()), cfg)


def _build_direct(make_net, cfg, steps, lr):
    wnet, vnet = make_net(), make_net()
    update = _adam([*wnet.parameters(), *vnet.parameters()], lr, steps)   # disjoint gradients

    def step(x0, k):
        loss, logs = direct_loss(wnet, vnet, cfg, x0)
        update(loss)
        return _floats(logs)
    samplers = {1: lambda x1: direct_sample(wnet, cfg, x1)}
    return Method("direct", {"w": wnet, "v": vnet}, step, samplers, _solution_path(wnet, cfg.soflow()), cfg)


def _build_fgm(make_net, cfg, steps, lr, teacher_share=0.5):
    """The first teacher_share of the steps pretrain the teacher by flow matching; then the
    online model and the generator start as copies of it, and each remaining step is one
    iteration of [FGM] Algorithm 1 (an online update, then a generator update)."""
    teacher = make_net()
    n_teacher = int(teacher_share * steps)
    update_teacher = _adam(teacher.parameters(), lr, n_teacher)
    nets = {"teacher": teacher}
    state = {}

    def step(x0, k):
        if k < n_teacher:
            loss, logs = fm_loss(teacher, cfg.fm(), x0)
            update_teacher(loss)
            return _floats(logs)
        if not state:                                   # distillation starts: copy the teacher
            teacher.requires_grad_(False)
            nets["online"], nets["generator"] = copy.deepcopy(teacher), copy.deepcopy(teacher)
            for name in ("online", "generator"):
                nets[name].requires_grad_(True)
                state[name] = _adam(nets[name].parameters(), lr, steps - n_teacher)
        z = torch.randn_like(x0)                        # data-free: x0 only gives the shape
        loss_o, logs_o = fgm_online_loss(nets["online"], nets["generator"], cfg, z)
        state["online"](loss_o)
        loss_g, logs_g = fgm_generator_loss(nets["generator"], nets["online"], teacher, cfg, z)
        state["generator"](loss_g)
        return _floats({**logs_g, "online_mse": logs_o["online_mse"]})
    samplers = {1: lambda x1: fgm_sample(nets.get("generator", teacher), cfg, x1)}
    return Method("fgm", nets, step, samplers, None, cfg)


def _build_fm(make_net, cfg, steps, lr):
    net = make_net()
    update = _adam(net.parameters(), lr, steps)

    def step(x0, k):
        loss, logs = fm_loss(net, cfg, x0)
        update(loss)
        return _floats(logs)
    samplers = {n: (lambda x1, n=n: fm_sample(net, cfg, x1, steps=n)) for n in (1, 2, 100)}
    return Method("fm", {"v": net}, step, samplers, _euler_path(net, cfg.soflow()), cfg)


# Settings for the 2-D toy (toy2d.py): the papers' defaults except where said. SoFlow's are
# toy2d.toy_defaults.
TOY = {
    # wide time distribution as SoFlow's toy setting (sigma 1.6), p = 0.5 as SoFlow's toy, 75%
    # of r != t: the best of a short trial of (ratio 0.25, 0.75) x (p 1, 0.5) at 2000 steps
    "meanflow": MeanFlowConfig(time_mu=0.0, time_sigma=1.6, ratio=0.75, p=0.5),
    "direct": DirectConfig(),
    # L2 alone, as the paper trains (Sec. 5.1; it reports that L1 + L2 also works on 2-D toys:
    # FGMConfig(l1_weight=1.0))
    "fgm": FGMConfig(),
    "fm": FlowMatchingConfig(),
}

_BUILDERS = {"soflow": _build_soflow, "meanflow": _build_meanflow, "direct": _build_direct,
             "fgm": _build_fgm, "fm": _build_fm}


def build(name, make_net, steps, lr, cfg=None):
    """A method ready to train for `steps` iterations: build('meanflow', lambda: MLP(), 4000, 2e-3).
    cfg: the method's config (default: TOY[name]; SoFlow needs its SoFlowConfig)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown method {name!r}; choose from {METHODS}")
    if cfg is None:
        if name == "soflow":
            raise ValueError("SoFlow needs its SoFlowConfig: build('soflow', make_net, steps, lr, cfg)")
        cfg = TOY[name]
    return _BUILDERS[name](make_net, cfg, steps, lr)
