"""
Grader of assignment 3 (the r(k, K) schedules of Eq. 16 and the l-schedule ablation).

    python -m pytest -q assignments/a3_l_schedule/grader.py                       # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a3_l_schedule/grader.py

The schedules are checked at their ends, for monotonicity, against closed forms
computed here at k = K/4, K/2, 3K/4 and against soflow.r_at; the ablation by
running it briefly (a few steps per schedule: the numbers mean nothing yet, the
table's structure is checked, and its metrics are computed again here from the
trained networks). The functions marked @in_submission run in the submission's
process and only return values; the tests check them here (see runner.py).
"""

import math
import os
import re

import numpy as np
import pytest
import torch

import soflow
import toy2d
import toynet
from checks import close
from runner import in_submission

FUNCTIONS = ("r_schedule", "intermediate_time", "run_ablation")
KINDS = ("exponential", "cosine", "linear", "constant")
SETTINGS = [(0.1, 1 / 320, 1000), (0.2, 0.002, 400), (1.0, 0.0003125, 64), (0.5, 0.5, 10)]


def ref(kind, k, K, r_init, r_end):
    cfg = soflow.SoFlowConfig(r_schedule=kind, r_init=r_init, r_end=r_end, total_steps=K)
    return soflow.r_at(cfg, k)


@in_submission
def schedule(sub, kind, ks, K, r_init, r_end):
    """r(k, K) at every k of ks."""
    return [sub.r_schedule(kind, k, K, r_init, r_end) for k in ks]


@pytest.mark.points(2)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("r_init,r_end,K", SETTINGS)
def test_endpoints(sub, kind, r_init, r_end, K):
    start, end = sub.run(schedule, kind, [0, K], K, r_init, r_end)
    close(start, r_end if kind == "constant" else r_init, f"{kind}: r(0, {K})", 0, 1e-12)
    close(end, r_end, f"{kind}: r({K}, {K})", 0, 1e-12)


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("r_init,r_end,K", SETTINGS)
def test_monotone_non_increasing(sub, kind, r_init, r_end, K):
    rs = sub.run(schedule, kind, list(range(K + 1)), K, r_init, r_end)
    bad = [k for k in range(K) if rs[k + 1] > rs[k] * (1 + 1e-12)]
    assert not bad, f"{kind}: r increases from k = {bad[0]} to {bad[0] + 1}: {rs[bad[0]]} -> {rs[bad[0] + 1]}"


@pytest.mark.points(3)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("r_init,r_end,K", SETTINGS[:3])
def test_closed_forms(sub, kind, r_init, r_end, K):
    ks = [round(frac * K) for frac in (0.25, 0.5, 0.75)]
    got = sub.run(schedule, kind, ks, K, r_init, r_end)
    for k, r in zip(ks, got):
        u = k / K
        expected = {"exponential": r_init * (r_end / r_init) ** u,
                    "cosine": r_end + (r_init - r_end) * (1 + math.cos(math.pi * u)) / 2,
                    "linear": r_init + (r_end - r_init) * u,
                    "constant": r_end}[kind]
        close(r, expected, f"{kind}: r({k}, {K})", 0, 1e-10)
        close(r, ref(kind, k, K, r_init, r_end), f"{kind}: r({k}, {K}) against soflow.r_at", 0, 1e-10)


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", KINDS)
def test_k_is_clamped_to_0_K(sub, kind):
    ks = [-5, 2000, 10**6]
    for k, r in zip(ks, sub.run(schedule, kind, ks, 1000, 0.1, 0.001)):
        close(r, ref(kind, k, 1000, 0.1, 0.001), f"{kind}: r({k}, 1000), k outside [0, K]", 0, 1e-12)


def time_pairs():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(500, generator=g, dtype=torch.float64).clamp(min=1e-4)
    s = torch.minimum(torch.rand(500, generator=g, dtype=torch.float64), t - 1e-4)
    return t, s


@in_submission
def intermediate_times(sub, rs):
    t, s = time_pairs()
    return [sub.intermediate_time(t, s, r, gap=1e-4) for r in rs]


@pytest.mark.points(1)
def test_intermediate_time(sub):
    rs = (1.0, 0.3, 1 / 320, 1e-7)
    t, s = time_pairs()
    for r, l in zip(rs, sub.run(intermediate_times, rs)):
        assert l.dtype == t.dtype, f"l: dtype {l.dtype}, expected that of t, {t.dtype}"
        expected = [min(ti + (si - ti) * r, ti - 1e-4) for ti, si in zip(t.tolist(), s.tolist())]
        close(l, expected, f"l = t + (s - t) r clamped to t - 1e-4, for r = {r:g},", 1e-15)

# ------------------------------------------------------------------ the ablation

TABLE_HEADER = ["schedule", "r(0)", "r(K/2)", "r(K)", "1-NFE RMSE", "energy distance"]
STEPS, WIDTH, R_INIT, R_END = 60, 32, 0.2, 0.002


def read_table(text):
    """The markdown table of ablation.md: header cells and the data rows' cells."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.strip().startswith("|")]
    assert len(rows) >= 2, "ablation.md holds no markdown table"
    header, body = rows[0], [r for r in rows[1:] if not re.fullmatch(r"[-:| ]+", "|".join(r))]
    return header, body


@in_submission
def ablation(sub):
    """A short ablation in a fresh folder, with r_schedule, intermediate_time and
    one_step_metrics watched: what they were asked, and what one_step_metrics was given."""
    import tempfile
    r_calls, l_calls, evaluated = [], [], []
    r_schedule, intermediate_time, one_step_metrics = sub.r_schedule, sub.intermediate_time, sub.one_step_metrics

    def r_spy(kind, k, K, r_init, r_end):
        r_calls.append((kind, k, K))
        return r_schedule(kind, k, K, r_init, r_end)

    def l_spy(t, s, r, gap=1e-4):
        l_calls.append(float(r))
        return intermediate_time(t, s, r, gap)

    def metrics_spy(net, cfg, x1, exact, data):
        result = one_step_metrics(net, cfg, x1, exact, data)
        evaluated.append({"state": dict(net.state_dict()), "cfg": cfg.to_dict(), "x1": x1, "exact": exact,
                          "data": data, "result": tuple(float(m) for m in result)})
        return result
    sub.r_schedule, sub.intermediate_time, sub.one_step_metrics = r_spy, l_spy, metrics_spy
    out = tempfile.mkdtemp()
    rows = sub.run_ablation(out=out, steps=STEPS, seed=0, width=WIDTH, batch=128, eval_points=300,
                            r_init=R_INIT, r_end=R_END)
    sub.r_schedule, sub.intermediate_time, sub.one_step_metrics = r_schedule, intermediate_time, one_step_metrics
    png = os.path.join(out, "schedules.png")
    with open(os.path.join(out, "ablation.md")) as f:
        table = f.read()
    return {"rows": rows, "r_calls": r_calls, "l_calls": l_calls, "evaluated": evaluated, "table": table,
            "png": open(png, "rb").read(8) if os.path.isfile(png) else b""}


def one_step(e):
    """The metrics of one evaluated network, computed here: its one-step samples against
    the exact map of the noise points, and their energy distance to the data given."""
    net = toynet.MLP(width=WIDTH)
    net.load_state_dict(e["state"])
    cfg = soflow.SoFlowConfig(**e["cfg"])
    with torch.no_grad():
        out = soflow.sample(net.eval(), cfg, torch.as_tensor(e["x1"]).float()).numpy()
    exact = toy2d.default_mixture().solve(np.asarray(e["x1"], dtype=np.float64), 1.0, 0.0)
    return toy2d.rmse(out, exact), toy2d.energy_distance(out, np.asarray(e["data"]))


@pytest.mark.points(3)
def test_ablation_produces_a_results_table(sub, prerequisites):
    prerequisites("test_endpoints", "test_closed_forms")
    a = sub.run(ablation)
    rows, evaluated = a["rows"], a["evaluated"]
    for kind in KINDS:
        asked = {k for kd, k, K in a["r_calls"] if kd == kind and K == STEPS}
        assert set(range(STEPS)) <= asked, f"the {kind} run did not ask r_schedule for every step"
    assert len(a["l_calls"]) == 4 * STEPS, (
        f"intermediate_time was called {len(a['l_calls'])} times, expected once per training step "
        f"(4 runs of {STEPS}): train the models with train_toy")
    for i, kind in enumerate(KINDS):
        close(a["l_calls"][i * STEPS:(i + 1) * STEPS], [ref(kind, k, STEPS, R_INIT, R_END) for k in range(STEPS)],
              f"the r that the {kind} run trained with, step by step,", 0, 1e-9)
    assert [r["schedule"] for r in rows] == list(KINDS), "one row per schedule, in the order of SCHEDULES"
    assert len(evaluated) == 4, f"one_step_metrics called {len(evaluated)} times, expected once per schedule"
    header, body = read_table(a["table"])
    assert [h.lower() for h in header] == [h.lower() for h in TABLE_HEADER], f"table header {header}"
    assert [b[0] for b in body] == list(KINDS), "one table row per schedule, in the order of SCHEDULES"
    for row, cells, e in zip(rows, body, evaluated):
        kind = row["schedule"]
        for key, k in (("r_start", 0), ("r_mid", STEPS // 2), ("r_end", STEPS)):
            close(row[key], ref(kind, k, STEPS, R_INIT, R_END), f"{kind}: {key}", 0, 1e-9)
        close(e["exact"], toy2d.default_mixture().solve(np.asarray(e["x1"], dtype=np.float64), 1.0, 0.0),
              f"{kind}: 'exact', which must be the exact one-step map of the noise points x1,", 1e-6)
        close([row["rmse"], row["energy"]], one_step(e),
              f"{kind}: the row's (rmse, energy) against the metrics of its network computed here", 1e-7, 1e-5)
        close([float(c) for c in cells[1:]], [row[k] for k in ("r_start", "r_mid", "r_end", "rmse", "energy")],
              f"{kind}: the table's numbers against the returned row", 1e-4, 1e-3)
    assert len({round(r["rmse"], 8) for r in rows}) > 1, "all four runs gave the same result: is r used?"
    assert a["png"] == b"\x89PNG\r\n\x1a\n", "schedules.png is missing or not a PNG"
