"""
The baselines on SoFlow's footing: flow matching [FM], MeanFlow [MF], Direct Models [DM] and Flow
Generator Matching [FGM], each a loss on soflow.py's network interface net(x, t, s, y=None) and time
convention (noise at t = 1, data at t = 0) returning (loss, logs), with a one-step sampler. A config's
.soflow() is the SoFlowConfig with which soflow.py's building blocks compute the method's quantities,
through SoFlow's Euler f(x, t, s) = x + (s - t) F(x, t, s): F(x, t, t) is a velocity (SoFlow's Eq. 10),
  - MeanFlow's jump z_r = z_t - (t - r) u(z_t, r, t) is f with F(x, t, s) = u(x, r=s, t);
  - Direct Models' flow map phi(x0, t') = x0 + t' w(x0, t') is f(x1, 1, 1 - t'), F = -w;
  - FGM's generator is a flow network taking one Euler step from noise: g(z) = z - F(z, 1, 1).
  [FM]  Lipman et al., "Flow Matching for Generative Modeling" (2022).
  [MF]  Geng, Deng, Bai, Kolter, He, "Mean Flows for One-step Generative Modeling", arXiv 2505.13447.
  [DM]  "End-to-End Single-Step Flow Matching via Direct Models" (anonymous submission).
  [FGM] "Flow Generator Matching" (anonymous submission; Sec. 4 and Algorithm 1).
"""

import copy
import math
from collections import namedtuple
from dataclasses import dataclass, fields

import torch

import soflow
from soflow import _bc

METHODS = ("soflow", "meanflow", "direct", "fgm", "fm")

def _check(cfg, *rules):
    """One ValueError naming the field: float fields finite, the method's rules (name, ok, what),
    then the fields SoFlow shares (schedule, classes, label dropout) through cfg.soflow()."""
    bad = [(f.name, "must be finite") for f in fields(cfg)
           if isinstance(getattr(cfg, f.name), float) and not math.isfinite(getattr(cfg, f.name))]
    for name, what in bad + [(name, what) for name, ok, what in rules if not ok]:
        raise ValueError(f"{type(cfg).__name__}.{name} = {getattr(cfg, name)!r}: {what}")
    cfg.soflow()

def _view(cfg, **kw):
    """The SoFlowConfig computing this method's quantities: Euler f, no guidance unless given."""
    return soflow.SoFlowConfig(**{**dict(schedule=cfg.schedule, param="euler", num_classes=cfg.num_classes,
                                         label_drop=cfg.label_drop, guidance_scale=1.0, guidance_mix=1.0), **kw})

def _labels(cfg, y, generator):
    """Label dropout to the null label as in SoFlow: (labels, kept mask), or (None, None)."""
    if y is not None and cfg.num_classes is None:
        raise ValueError("labels were given but the config is unconditional (num_classes=None)")
    return (None, None) if y is None else soflow.drop_labels(_view(cfg), y, generator)

def _tdt(x):   # at least float32: times and losses never in half precision
    return torch.promote_types(x.dtype, torch.float32)

def _fm(cfg):   # the flow matching of a method's velocity networks: t ~ U(0, 1), its labels
    return FlowMatchingConfig(schedule=cfg.schedule, num_classes=cfg.num_classes, label_drop=cfg.label_drop)

def _detached(net):   # the network with its parameters out of the graph: gradients only through its inputs
    params = {name: p.detach() for name, p in net.named_parameters()}
    return lambda *args: torch.func.functional_call(net, params, args)

# ------------------------------------------------------------------------ flow matching [FM]
@dataclass(frozen=True)
class FlowMatchingConfig:
    schedule: str = "linear"
    time_mu: float | None = None     # None: t ~ U(0, 1); else t ~ logit-normal(time_mu, time_sigma)
    time_sigma: float = 1.0
    num_classes: int | None = None
    label_drop: float = 0.0

    def __post_init__(self):
        _check(self, ("time_sigma", self.time_sigma > 0, "must be > 0"))
    def soflow(self):
        return _view(self, p=0.0)    # p = 0: no adaptive weight

def flow_matching_loss(net, cfg, x0, y=None, generator=None):
    """E || v_theta(x_t, t) - (alpha' x0 + beta' x1) ||^2 ([FM] Sec. 4; [DM] Eq. 15; [FGM] Eq. 3.6), mean
    over the data dimensions: SoFlow's flow matching loss (Eq. 11) without adaptive weight."""
    view, n = cfg.soflow(), x0.shape[0]
    x1 = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    t = (torch.rand(n, device=x0.device, generator=generator) if cfg.time_mu is None
         else soflow.logit_normal(n, cfg.time_mu, cfg.time_sigma, x0.device, generator)).to(_tdt(x0))
    x_t, v_c = soflow.interpolate(view, x0, x1, t)
    loss, mse, _ = soflow.fm_loss(net, view, x_t, t, _labels(cfg, y, generator)[0], v_c)   # p = 0: a plain mean
    return loss, {"loss": loss.detach(), "fm_mse": mse.mean()}

# ------------------------------------------------------------------------------ MeanFlow [MF]
# The network is the average velocity u(z_t, r, t) = 1/(t - r) int_r^t v dtau ([MF] Eq. 3) = net(z, t, r),
# trained on u = v - (t - r) du/dt (Eq. 6), du/dt = v d_z u + d_t u (Eq. 8) by one JVP: the loss is
# sg(w) || u_theta - sg(v - (t - r) du/dt) ||^2 (Eq. 9, 10), w = 1 / (||err||^2 + eps)^p (Sec. 4.3).
@dataclass(frozen=True)
class MeanFlowConfig:
    schedule: str = "linear"
    time_mu: float = -0.4            # t and r: two logit-normal draws, t = max, r = min ([MF] Table 1)
    time_sigma: float = 1.0
    ratio: float = 0.25              # share of the batch with r != t; the rest has r = t ([MF] Table 1)
    p: float = 1.0                   # adaptive weight exponent (Sec. 4.3)
    eps: float = 0.01                # its constant c (the default of a public JAX implementation)
    num_classes: int | None = None   # labels; the null label is index num_classes
    label_drop: float = 0.0          # 0.1 with labels ([MF] Sec. 4.2)
    # guidance ([MF] Eq. 21) for t in [guidance_t_min, guidance_t_max], effective scale omega / (1 - kappa):
    # v~ = omega v + kappa u(z_t, t, t | c) + (1 - omega - kappa) u(z_t, t, t | null)
    omega: float = 1.0
    kappa: float = 0.0
    guidance_t_min: float = 0.0
    guidance_t_max: float = 1.0

    def __post_init__(self):
        _check(self, ("time_sigma", self.time_sigma > 0, "must be > 0"),
               ("ratio", 0 <= self.ratio <= 1, "must be in [0, 1]"), ("p", self.p >= 0, "must be >= 0"),
               ("eps", self.eps > 0, "must be > 0"), ("kappa", 0 <= self.kappa < 1, "must be in [0, 1)"),
               ("omega", self.kappa >= 1 or self.omega / (1 - self.kappa) >= 1,
                f"the effective scale omega / (1 - kappa) must be >= 1 (kappa = {self.kappa})"),
               ("guidance_t_min", 0 <= self.guidance_t_min <= self.guidance_t_max <= 1,
                f"need 0 <= guidance_t_min <= guidance_t_max = {self.guidance_t_max} <= 1"),
               ("omega", self.num_classes is not None or (self.omega == 1 and self.kappa == 0),
                "guidance needs labels: set num_classes"))
    def soflow(self):   # Eq. 21 is SoFlow's v_mix (Eq. 19), w = omega / (1 - kappa), m = 1 - kappa, no decay
        return _view(self, guidance_scale=self.omega / (1 - self.kappa), guidance_mix=1 - self.kappa, guidance_t_max=1.0)

# Class-conditional ImageNet (bench.py): [MF]'s times, ratio, p; guidance as a public JAX implementation
# (omega = 1, kappa = 0.5: scale 2 at every t; [MF] gives no per-model values).
MEANFLOW_IMAGENET = MeanFlowConfig(num_classes=1000, label_drop=0.1, omega=1.0, kappa=0.5)

def meanflow_times(cfg, n, device=None, generator=None):
    """(t, r): two logit-normal draws sorted; the first round((1 - ratio) n) samples get r = t."""
    a, b = (soflow.logit_normal(n, cfg.time_mu, cfg.time_sigma, device, generator) for _ in range(2))
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    return t, torch.where(torch.arange(n, device=t.device) < round((1 - cfg.ratio) * n), t, r)

def meanflow_jvp(net, z, t, r, v, y=None):
    """u = net(z, t, r, y) (with its graph) and du/dt = v d_z u + d_t u ([MF] Eq. 8) by forward-mode
    autodiff, tangent (v, 1, 0) on (z, t, r) (attention: dit.set_attention(net, 'math'))."""
    return torch.func.jvp(lambda z_, t_, r_: net(z_, t_, r_, y), (z, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))

def meanflow_loss(net, cfg, x0, y=None, generator=None):
    """[MF] Eq. 9, 10 with the adaptive weight and guidance (Sec. 4.2, Eq. 21); the squared error
    summed over the data dimensions as in [MF]."""
    view, B, dev = cfg.soflow(), x0.shape[0], x0.device
    x1 = torch.randn(x0.shape, device=dev, dtype=x0.dtype, generator=generator)
    t, r = (u.to(_tdt(x0)) for u in meanflow_times(cfg, B, dev, generator))
    z, v = soflow.interpolate(view, x0, x1, t)
    y, keep = _labels(cfg, y, generator)
    if y is not None and view.guided:     # the model's own velocities u(z_t, t, t | .), gradient-free
        with torch.no_grad():
            v_null = soflow.velocity(net, view, z, t, torch.full_like(y, cfg.num_classes))
            v_cond = soflow.velocity(net, view, z, t, y) if cfg.kappa > 0 else torch.zeros_like(v_null)
            v_mix = soflow.mix_velocity(view, t, v, v_null.to(v.dtype), v_cond.to(v.dtype))
        on = keep & (t >= cfg.guidance_t_min) & (t <= cfg.guidance_t_max)
        v = torch.where(_bc(on, v), v_mix, v)            # dropped labels and t outside: plain v
    u, dudt = meanflow_jvp(net, z, t, r, v, y)
    u_tgt = (v - _bc(t - r, v) * dudt).detach()           # [MF] Eq. 10
    err = (u.to(_tdt(u)) - u_tgt.to(_tdt(u))).square().flatten(1).sum(1)   # in at least fp32 (bf16 forwards)
    w = 1 / (err.detach() + cfg.eps) ** cfg.p
    loss = (w * err).mean()
    return loss, {"loss": loss.detach(), "mf_mse": (err.detach() / x0[0].numel()).mean(), "mf_weight": w.mean(),
                  "r_neq_t": (r < t).float().mean()}

def meanflow_sample(net, cfg, x1, y=None, steps=1):
    """z_r = z_t - (t - r) u(z_t, r, t) over `steps` equal intervals: SoFlow's chain with the Euler f."""
    return soflow.sample_chain(net, cfg.soflow(), x1, y, steps=steps)

# ------------------------------------------------------------------------ Direct Models [DM]
# A velocity v_theta trained by flow matching ([DM] Eq. 15) and a flow map from noise phi(x0, t') =
# x0 + t' w(x0, t') (Eq. 4) by local velocity propagation (Eq. 13, 16): w(x0, t' + d) <- (t' - d)/t'
# sg[w(x0, t')] + d/t' v_theta(x0 + t' sg[w(x0, t')], t'). [DM] runs from noise at t' = 0 to data at
# t' = 1: t' = 1 - t, v_DM = -v, w = -F(x1, 1, 1 - t'); Eq. 13 is linear in (w, v), so it keeps its form.
@dataclass(frozen=True)
class DirectConfig:
    schedule: str = "linear"
    delta: float = 0.01              # the finite-difference step ([DM] Table 5)
    num_classes: int | None = None
    label_drop: float = 0.0          # 0.1 with labels ([DM] Table 5)
    cfg_scale: float = 1.0           # guidance on v_theta inside the propagation target

    def __post_init__(self):
        _check(self, ("delta", 0 < self.delta < 0.5, "must be in (0, 0.5)"),
               ("cfg_scale", self.cfg_scale >= 1, "must be >= 1 (1 = no guidance)"),
               ("cfg_scale", self.num_classes is not None or self.cfg_scale == 1, "guidance needs labels: set num_classes"))
    soflow, fm = _view, _fm       # fm: the velocity network's flow matching ([DM] Algorithm 1)

@torch.no_grad()
def direct_target(wnet, vnet, cfg, x1, t, y=None):
    """The target of F(x1, 1, t - delta) by [DM] Eq. 13 in our time t (t' = 1 - t). [DM] Table 5 uses
    guidance 1.5 without saying where: here on v_theta in this target, where it reaches the sampler."""
    view, one = cfg.soflow(), torch.ones_like(t)
    F_t = wnet(x1, one, t, y)
    x_t = soflow.solution(wnet, view, x1, one, t, F=F_t)         # f(x1, 1, t) = x0 + t' sg[w] of [DM]
    v = soflow.velocity(vnet, view, x_t, t, y)
    if y is not None and cfg.cfg_scale != 1.0:
        v_null = soflow.velocity(vnet, view, x_t, t, torch.full_like(y, cfg.num_classes))
        v = v_null + cfg.cfg_scale * (v - v_null)
    d, tp = cfg.delta, _bc(1 - t, x1)                             # tp = the paper's t'
    return (tp - d) / tp * F_t + d / tp * v

def direct_prop_loss(wnet, vnet, cfg, x1, y=None, generator=None):
    """[DM] Eq. 16 on the flow-map network, t' ~ U[delta, 1 - delta]; the target is gradient-free."""
    d = cfg.delta
    t = (1 - (d + (1 - 2 * d) * torch.rand(x1.shape[0], device=x1.device, generator=generator))).to(_tdt(x1))
    target = direct_target(wnet, vnet, cfg, x1, t, y)
    mse = (wnet(x1, torch.ones_like(t), t - d, y) - target).square().flatten(1).mean(1)   # F(x1, 1, t - d) = -w(x1, t' + d)
    return mse.mean(), mse.detach()

def direct_loss(wnet, vnet, cfg, x0, y=None, generator=None):
    """One iteration of [DM] Algorithm 1, L_CFM(theta) + L_prop(nu): disjoint networks, one backward."""
    loss_v, logs_v = flow_matching_loss(vnet, cfg.fm(), x0, y, generator)
    y_w, _ = _labels(cfg, y, generator)
    x1 = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    loss_w, mse = direct_prop_loss(wnet, vnet, cfg, x1, y_w, generator)
    loss = loss_v + loss_w
    return loss, {"loss": loss.detach(), "cfm_mse": logs_v["fm_mse"], "prop_mse": mse.mean()}

def direct_sample(wnet, cfg, x1, y=None):
    """x_data = x1 + w(x1, t' = 1) ([DM] Eq. 17) = f(x1, 1, 0): one NFE."""
    return soflow.sample(wnet, cfg.soflow(), x1, y)

# ------------------------------------------------------------ Flow Generator Matching [FGM]
# Distil a frozen flow u (the teacher) into a one-step generator g_theta with an online flow v_psi of
# its samples; Algorithm 1 alternates (a) psi: flow matching on x0 = g(z), (b) theta: L1 + L2,
# L1 = || u(x_t) - v_psi(x_t) ||^2 (Eq. 4.11), L2 = 2 (u - v_psi)^T (v_psi - u(x_t | x0)) (Eq. 4.12), with
# gradients through x_t and u(x_t | x0) only: Grad_1 + Grad_2 (Eq. 4.4, 4.5, Theorem 4.2) = grad Eq. 4.1.
# The paper drops L1 on CIFAR-10 (Sec. 5.1) and builds g from the teacher at a time t* (Eq. 5.1).
@dataclass(frozen=True)
class FGMConfig:
    schedule: str = "linear"
    l1_weight: float = 0.0           # weight of L1 (Eq. 4.11); 1 gives the full gradient of Eq. 4.1
    num_classes: int | None = None
    label_drop: float = 0.0          # of the teacher's flow matching pretraining

    def __post_init__(self):
        _check(self, ("l1_weight", self.l1_weight >= 0, "must be >= 0"))
    soflow, fm = _view, _fm       # fm: the teacher's and the online model's flow matching

def fgm_generate(gen, cfg, z, y=None):
    """x0 = g_theta(z) = z - F(z, 1, 1), one Euler step from t = 1 to 0, differentiable."""
    return z - soflow.velocity(gen, cfg.soflow(), z, torch.ones(z.shape[0], device=z.device, dtype=_tdt(z)), y)

def fgm_terms(gen, online, teacher, cfg, z, x1, t, y=None):
    """Per-sample L1, L2 ([FGM] Eq. 4.11, 4.12) for given z, noise x1 and t; gradients reach g only."""
    view = cfg.soflow()
    x_t, u_c = soflow.interpolate(view, fgm_generate(gen, cfg, z, y), x1, t)   # both carry theta's gradient
    u, v = (soflow.velocity(_detached(net), view, x_t, t, y) for net in (teacher, online))   # "freeze psi"
    return (u - v).square().flatten(1).mean(1), 2 * ((u - v) * (v - u_c)).flatten(1).mean(1)

def fgm_generator_loss(gen, online, teacher, cfg, z, y=None, generator=None):
    """Step (b) of [FGM] Algorithm 1: l1_weight L1 + L2, t ~ U(0, 1). Data-free: z is noise."""
    x1 = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
    t = torch.rand(z.shape[0], device=z.device, generator=generator).to(_tdt(z))
    l1, l2 = fgm_terms(gen, online, teacher, cfg, z, x1, t, y)
    loss = (cfg.l1_weight * l1 + l2).mean()
    return loss, {"loss": loss.detach(), "fgm_l1": l1.detach().mean(), "fgm_l2": l2.detach().mean()}

def fgm_online_loss(online, gen, cfg, z, y=None, generator=None):
    """Step (a) of [FGM] Algorithm 1: flow matching of the online model on the generator's samples."""
    with torch.no_grad():
        x0 = fgm_generate(gen, cfg, z, y)
    fm = FlowMatchingConfig(schedule=cfg.schedule, num_classes=cfg.num_classes)   # no label dropout
    loss, logs = flow_matching_loss(online, fm, x0, y, generator)
    return loss, {"loss": loss.detach(), "online_mse": logs["fm_mse"]}

def fgm_sample(gen, cfg, x1, y=None):
    """One NFE: g(x1) = x1 - F(x1, 1, 1), soflow.sample_euler with one step."""
    return soflow.sample_euler(gen, cfg.soflow(), x1, y, steps=1)

# ---------------------------------------------------------------------- training on the toy
# Each method for toy2d.py's loop, its networks from the same make_net(), Adam with a cosine decay:
# nets: name -> module; step(x0, k) -> dict of floats, iteration k of its paper's algorithm; samplers:
# NFE -> fn(noise x1) -> samples; trajectory(x1, times) -> states (len(times), N, ...), or None.
Method = namedtuple("Method", "name nets step samplers trajectory config")

def _adam(nets, lr, steps):
    """update(loss, logs): backpropagate, an Adam step (beta2 = 0.99 as the authors' imagenet.yaml, better
    than 0.999 on the toy) and a cosine-decay step; returns the logs as floats."""
    opt = torch.optim.Adam([p for net in nets for p in net.parameters()], lr=lr, betas=(0.9, 0.99), fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    def update(loss, logs):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {k: float(v) for k, v in logs.items()}
    return update

def _fgm(make_net, cfg, steps, lr, teacher_share=0.5):
    """The first teacher_share of the steps pretrain the teacher by flow matching; then the online
    model and the generator start as its copies, and each step is one iteration of Algorithm 1."""
    nets, n_teacher = {"teacher": make_net()}, int(teacher_share * steps)
    updates = {"teacher": _adam([nets["teacher"]], lr, n_teacher)}
    def step(x0, k):
        if k < n_teacher:
            return updates["teacher"](*flow_matching_loss(nets["teacher"], cfg.fm(), x0))
        if "generator" not in nets:                     # distillation starts: copy the teacher
            nets["teacher"].requires_grad_(False)
            for name in ("online", "generator"):
                nets[name] = copy.deepcopy(nets["teacher"]).requires_grad_(True)
                updates[name] = _adam([nets[name]], lr, steps - n_teacher)
        z = torch.randn_like(x0)                        # data-free: x0 only gives the shape
        logs_o = updates["online"](*fgm_online_loss(nets["online"], nets["generator"], cfg, z))
        logs_g = updates["generator"](*fgm_generator_loss(nets["generator"], nets["online"], nets["teacher"], cfg, z))
        return {**logs_g, "online_mse": logs_o["online_mse"]}
    return Method("fgm", nets, step, {1: lambda x1: fgm_sample(nets.get("generator", nets["teacher"]), cfg, x1)}, None, cfg)

TOY = {   # the toy's settings (SoFlow's: toy2d.toy_defaults): the papers' defaults except where said
    # sigma 1.6 as SoFlow's toy; p = 0.5, 75% of r != t: best of (ratio 0.25, 0.75) x (p 1, 0.5) at 2000 steps
    "meanflow": MeanFlowConfig(time_mu=0.0, time_sigma=1.6, ratio=0.75, p=0.5),
    "direct": DirectConfig(),
    "fgm": FGMConfig(),       # L2 alone as the paper trains (it reports that L1 + L2 also works on 2-D toys)
    "fm": FlowMatchingConfig()}

def build(name, make_net, steps, lr, cfg=None):
    """A method ready to train for `steps` iterations: build('meanflow', lambda: MLP(), 4000, 2e-3).
    cfg: the method's config (default TOY[name]; SoFlow needs its SoFlowConfig)."""
    if name not in METHODS or (name == "soflow" and cfg is None):
        raise ValueError(f"unknown method {name!r}; choose from {METHODS}" if name not in METHODS else
                         "SoFlow needs its SoFlowConfig: build('soflow', make_net, steps, lr, cfg)")
    cfg = TOY[name] if cfg is None else cfg
    if name == "fgm":
        return _fgm(make_net, cfg, steps, lr)
    net = make_net()
    if name == "soflow":
        nets, loss = {"F": net}, lambda x0, k: soflow.soflow_loss(net, cfg, x0, step=k)
    elif name == "meanflow":
        nets, loss = {"u": net}, lambda x0, k: meanflow_loss(net, cfg, x0)
    elif name == "direct":
        nets, loss = {"w": net, "v": make_net()}, lambda x0, k: direct_loss(net, nets["v"], cfg, x0)
    else:
        nets, loss = {"v": net}, lambda x0, k: flow_matching_loss(net, cfg, x0)
    update = _adam(nets.values(), lr, steps)     # Direct Models: one optimizer, disjoint gradients
    # Samplers and paths through each config's Euler f: jumps along f (Direct Models' map from noise
    # has one, x1 + w(x1, 1) of [DM] Eq. 17), or for flow matching Euler steps on its velocity.
    view = cfg if name == "soflow" else cfg.soflow()
    kind, nfes = ("euler", (1, 2, 100)) if name == "fm" else ("solution", (1,) if name == "direct" else (1, 2))
    sampler = soflow.sample_euler if name == "fm" else soflow.sample_chain
    samplers = {n: (lambda x1, n=n: sampler(net, view, x1, steps=n)) for n in nfes}
    return Method(name, nets, lambda x0, k: update(*loss(x0, k)), samplers,
                  lambda x1, times: soflow.trajectory(net, view, x1, times, kind), cfg)
