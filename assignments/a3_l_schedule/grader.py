"""
Grader of assignment 3 (the r(k, K) schedules of Eq. 16 and the l-schedule ablation).

    python -m pytest -q assignments/a3_l_schedule/grader.py                       # grades student.py
    SUBMISSION=path/to/file.py python -m pytest -q assignments/a3_l_schedule/grader.py

The schedules are checked at their ends, for monotonicity, against closed forms
computed here at k = K/4, K/2, 3K/4 and against soflow.r_schedule; the ablation by
running it briefly (a few steps per schedule: the numbers mean nothing yet, the
table's structure and its agreement with the computed metrics are checked) and
reading the table it writes.
"""

import math
import re

import numpy as np
import pytest
import torch

import soflow
import toy2d

KINDS = ("exponential", "cosine", "linear", "constant")
SETTINGS = [(0.1, 1 / 320, 1000), (0.2, 0.002, 400), (1.0, 0.0003125, 64), (0.5, 0.5, 10)]


def ref(kind, k, K, r_init, r_end):
    cfg = soflow.SoFlowConfig(r_schedule=kind, r_init=r_init, r_end=r_end, total_steps=K)
    return soflow.r_at(cfg, k)


@pytest.mark.points(2)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("r_init,r_end,K", SETTINGS)
def test_endpoints(sub, kind, r_init, r_end, K):
    start = sub.r_schedule(kind, 0, K, r_init, r_end)
    assert start == pytest.approx(r_end if kind == "constant" else r_init, rel=1e-12), "r(0, K)"
    assert sub.r_schedule(kind, K, K, r_init, r_end) == pytest.approx(r_end, rel=1e-12), "r(K, K)"


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("r_init,r_end,K", SETTINGS)
def test_monotone_non_increasing(sub, kind, r_init, r_end, K):
    rs = [sub.r_schedule(kind, k, K, r_init, r_end) for k in range(K + 1)]
    bad = [k for k in range(K) if rs[k + 1] > rs[k] * (1 + 1e-12)]
    assert not bad, f"r increases from k = {bad[0]} to {bad[0] + 1}: {rs[bad[0]]} -> {rs[bad[0] + 1]}"


@pytest.mark.points(3)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("r_init,r_end,K", SETTINGS[:3])
def test_closed_forms(sub, kind, r_init, r_end, K):
    for frac in (0.25, 0.5, 0.75):
        k = round(frac * K)
        u = k / K
        expected = {"exponential": r_init * (r_end / r_init) ** u,
                    "cosine": r_end + (r_init - r_end) * (1 + math.cos(math.pi * u)) / 2,
                    "linear": r_init + (r_end - r_init) * u,
                    "constant": r_end}[kind]
        got = sub.r_schedule(kind, k, K, r_init, r_end)
        assert got == pytest.approx(expected, rel=1e-10), f"r({k}, {K})"
        assert got == pytest.approx(ref(kind, k, K, r_init, r_end), rel=1e-10), f"r({k}, {K}) against soflow"


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", KINDS)
def test_k_is_clamped_to_0_K(sub, kind):
    for k in (-5, 2000, 10**6):
        assert sub.r_schedule(kind, k, 1000, 0.1, 0.001) == pytest.approx(ref(kind, k, 1000, 0.1, 0.001), rel=1e-12)


@pytest.mark.points(1)
def test_intermediate_time(sub):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(500, generator=g, dtype=torch.float64).clamp(min=1e-4)
    s = torch.minimum(torch.rand(500, generator=g, dtype=torch.float64), t - 1e-4)
    for r in (1.0, 0.3, 1 / 320, 1e-7):
        l = sub.intermediate_time(t, s, r, gap=1e-4)
        assert l.shape == t.shape and l.dtype == t.dtype
        expected = torch.tensor([min(ti + (si - ti) * r, ti - 1e-4) for ti, si in zip(t.tolist(), s.tolist())],
                                dtype=torch.float64)
        torch.testing.assert_close(l, expected, rtol=0, atol=1e-15)
        assert (l < t).all() and (l >= s - 1e-12).all()

# ------------------------------------------------------------------ the ablation

TABLE_HEADER = ["schedule", "r(0)", "r(K/2)", "r(K)", "1-NFE RMSE", "energy distance"]


def read_table(path):
    """The markdown table of ablation.md: header cells and the data rows' cells."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in open(path) if line.strip().startswith("|")]
    assert len(rows) >= 2, f"no markdown table in {path}"
    header, body = rows[0], [r for r in rows[1:] if not re.fullmatch(r"[-:| ]+", "|".join(r))]
    return header, body


@pytest.mark.points(3)
def test_ablation_produces_a_results_table(sub, prerequisites, tmp_path, monkeypatch):
    prerequisites("test_endpoints", "test_closed_forms")
    calls, metrics = [], []
    r_schedule, one_step_metrics = sub.r_schedule, sub.one_step_metrics

    def r_spy(kind, k, K, r_init, r_end):
        calls.append((kind, k, K))
        return r_schedule(kind, k, K, r_init, r_end)

    def metrics_spy(net, cfg, x1, exact, data):
        np.testing.assert_allclose(exact, toy2d.default_mixture().solve(x1, 1.0, 0.0), atol=1e-6,
                                   err_msg="'exact' must be the exact one-step map of the noise points x1")
        metrics.append(one_step_metrics(net, cfg, x1, exact, data))
        return metrics[-1]
    monkeypatch.setattr(sub, "r_schedule", r_spy)           # the training must use the submission's r
    monkeypatch.setattr(sub, "one_step_metrics", metrics_spy)
    steps, r_init, r_end = 60, 0.2, 0.002
    rows = sub.run_ablation(out=str(tmp_path), steps=steps, seed=0, width=32, batch=128, eval_points=300,
                            r_init=r_init, r_end=r_end)

    for kind in KINDS:
        asked = {k for kd, k, K in calls if kd == kind and K == steps}
        assert set(range(steps)) <= asked, f"the {kind} run did not ask r_schedule for every step"
    assert [r["schedule"] for r in rows] == list(KINDS), "one row per schedule, in the order of SCHEDULES"
    assert len(metrics) == 4, f"one_step_metrics called {len(metrics)} times, expected once per schedule"
    header, body = read_table(tmp_path / "ablation.md")
    assert [h.lower() for h in header] == [h.lower() for h in TABLE_HEADER], f"table header {header}"
    assert [b[0] for b in body] == list(KINDS), "one table row per schedule, in the order of SCHEDULES"
    for row, cells, (rmse, energy) in zip(rows, body, metrics):
        kind = row["schedule"]
        for key, k in (("r_start", 0), ("r_mid", steps // 2), ("r_end", steps)):
            assert row[key] == pytest.approx(ref(kind, k, steps, r_init, r_end), rel=1e-9), f"{kind}: {key}"
        assert (row["rmse"], row["energy"]) == pytest.approx((rmse, energy), rel=1e-9), f"{kind}: metrics"
        np.testing.assert_allclose([float(c) for c in cells[1:]],
                                   [row[k] for k in ("r_start", "r_mid", "r_end", "rmse", "energy")],
                                   rtol=1e-3, atol=1e-4, err_msg=f"{kind}: the table and the returned row differ")
    assert len({round(r["rmse"], 8) for r in rows}) > 1, "all four runs gave the same result: is r used?"
    png = tmp_path / "schedules.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "schedules.png is missing or not a PNG"
