"""
The settings of a training run, from the command line: the script's plain values
(name = value  # comment, which is also its --help), then a named preset, then --name value.
Besides the settings, any argument of the network's constructor and any soflow.SoFlowConfig
field may be given. A bad value stops the run here with one line, before any compute.
"""

import argparse
import dataclasses
import inspect
import math
import re

import soflow

CHOICES = {"optimizer": ("adam", "adamw", "radam"), "precision": ("auto", "bf16", "fp32"),
           "device": ("auto", "cpu", "cuda"), "compile": ("auto", "on", "off"), "ema_dtype": ("float32", "float64"),
           "method": tuple(soflow.PRESETS), "schedule": soflow.SCHEDULE_NAMES, "param": soflow.PARAM_NAMES,
           "r_schedule": soflow.R_SCHEDULES, "attn": ("fused", "math")}
RANGES = {  # checked after parsing: (test, what the value must be)
    "lr": (lambda v: 0 < v <= 1, "must be in (0, 1]"), "grad_clip": (lambda v: v >= 0, "must be >= 0 (0 = off)"),
    **{k: (lambda v: 0 <= v < 1, "must be in [0, 1)") for k in ("beta1", "beta2", "ema_decay")},
    "seed": (lambda v: 0 <= v < 2 ** 20, "must be in [0, 2**20)"),
    "steps": (lambda v: 1 <= v < 2 ** 24, "must be in [1, 2**24)"),
    **{k: (lambda v: v >= 1, "must be >= 1") for k in ("batch_size", "log_every", "ema_every", "num_samples")},
    **{k: (lambda v: v >= 0, "must be >= 0") for k in ("weight_decay", "peak_tflops", "micro_batch", "ckpt_every",
                                                        "keep_every", "sample_every", "stop_at", "num_workers")},
    **{k: (lambda v: 0 <= v <= 1, "must be in [0, 1]") for k in ("augment_p", "xflip")},
}


def boolean(text):   # True/False (or 1/0), nothing else: a typo is an error, not False
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"{text!r} is not True or False")
    return text.lower() in ("true", "1")


def _finite(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _type_of(default):
    if isinstance(default, (tuple, list)):
        return lambda text: tuple(int(u) for u in text.strip("()[] ").split(",") if u.strip())
    return {bool: boolean, int: int, float: _finite}.get(type(default), str)


def configure(settings, presets, net_class, doc, script, argv=None, fixed=(), choices=None, describe=None):
    """The run's settings as a namespace: `settings` (the script's plain values), then the
    values of --preset NAME, then every option given. Besides the settings, any constructor
    argument of net_class but `fixed` (they come from the data) and any SoFlowConfig field
    but K and the classes may be given, by an option or a preset: they come back apart, as
    .net_args and .method_args. A bad value stops here with one line, before any compute.
    describe(preset values) adds a line to --list_presets."""
    comments = dict(re.findall(r"^(\w+) = .*?#\s*(.*)$", open(script).read(), re.M))
    choices = {**CHOICES, **(choices or {})}
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.error = lambda msg: p.exit(2, f"{p.prog}: error: {msg} (--help lists the settings)\n")
    p.add_argument("--list_presets", action="store_true", help="print the named settings and exit")
    for name, value in settings.items():
        p.add_argument(f"--{name}", type=_type_of(value), choices=presets if name == "preset" else choices.get(name),
                       help=f"{comments.get(name, '')} (default: {value!r})")
    groups = (("net", f"{net_class.__name__} arguments (default: the model's)",
               [(k, v.default) for k, v in inspect.signature(net_class).parameters.items() if k not in fixed]),
              ("method", "soflow.SoFlowConfig fields (default: the method preset's)",
               [(f.name, f.default) for f in dataclasses.fields(soflow.SoFlowConfig)
                if f.name not in ("total_steps", "num_classes")]))
    for prefix, title, args in groups:
        g = p.add_argument_group(title)
        for name, default in args:
            g.add_argument(f"--{name}", dest=f"{prefix}.{name}", type=_type_of(default), choices=choices.get(name))
    given = vars(p.parse_args(argv))
    group_of = {name: prefix for prefix, _, args in groups for name, _ in args}
    named = lambda values: {k if k in settings else f"{group_of[k]}.{k}": v for k, v in values.items()}   # as options
    if given.pop("list_presets", False):
        for name, values in presets.items():
            print(f"{name}:\n  " + " ".join(f"--{k}={v}" for k, v in values.items()))
            method = soflow.preset(values.get("method", settings["method"]), total_steps=values.get("steps", 1),
                                   **{k[7:]: v for k, v in named(values).items() if k.startswith("method.")})
            print("  method: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(method).items()))
            if describe:
                print("  " + describe(values))
        raise SystemExit(0)
    chosen = {**named(presets.get(given.get("preset", ""), {})), **given}     # the options win
    C = {**settings, **{k: v for k, v in chosen.items() if "." not in k}}
    C["net_args"] = {k[4:]: v for k, v in chosen.items() if k.startswith("net.")}
    C["method_args"] = {k[7:]: v for k, v in chosen.items() if k.startswith("method.")}
    for name, (ok, what) in RANGES.items():
        if name in C and not ok(C[name]):
            raise SystemExit(f"error: --{name}={C[name]!r}: {what}")
    return argparse.Namespace(**C)


def method_config(C, num_classes=None):
    """The SoFlowConfig of the run: the method preset, K = steps, the given fields, and the
    number of classes of the data (for class-conditional presets)."""
    try:
        cfg = soflow.preset(C.method, total_steps=C.steps, **C.method_args)
        return cfg if cfg.num_classes is None or num_classes is None else cfg.replace(num_classes=num_classes)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def accumulation(C, world):
    """(micro-batch, accumulation micro-steps): batch_size = micro_batch x accumulation x world."""
    micro = C.micro_batch or C.batch_size // world
    if C.batch_size % world:
        raise SystemExit(f"error: --batch_size={C.batch_size} cannot be shared by {world} processes")
    if C.batch_size % (micro * world):
        raise SystemExit(f"error: --batch_size={C.batch_size} is not divisible by micro_batch x world size = {micro} x "
                         f"{world} = {micro * world}; choose a --micro_batch that divides {C.batch_size // world}")
    return micro, C.batch_size // (micro * world)
