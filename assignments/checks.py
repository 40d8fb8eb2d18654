"""Comparisons for the graders whose failure messages name the quantity and show the error."""

import torch


def close(got, expected, what, atol=1e-10, rtol=0.0):
    """Assert |got - expected| <= atol + rtol |expected| elementwise (same shape, NaN fails).
    The message names `what`, the largest error, the worst element and how many are off."""
    got = torch.as_tensor(got, dtype=torch.float64).detach()      # a Python float would become float32
    expected = torch.as_tensor(expected, dtype=torch.float64).detach()
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    err = (got - expected).abs()
    bad = ~(err <= atol + rtol * expected.abs())             # NaN counts as bad
    if bad.any():
        excess = torch.where(bad, torch.nan_to_num(err, nan=float("inf")), torch.zeros_like(err))
        i = tuple(int(k) for k in torch.unravel_index(excess.argmax(), err.shape)) if err.ndim else ()
        allowed = f"{atol:.1e}" + (f" + {rtol:.1e} |expected|" if rtol else "")
        raise AssertionError(
            f"{what} is off by up to {err.nan_to_num(nan=float('inf')).max().item():.3g} (allowed {allowed}); "
            f"{int(bad.sum())} of {bad.numel()} values wrong, e.g. at index {list(i)}: "
            f"got {got[i].item():.12g}, expected {expected[i].item():.12g}")


def grads_close(got, expected, what, rtol=1e-7, atol=1e-10):
    """Two lists of parameter gradients, compared parameter by parameter."""
    assert len(got) == len(expected), f"{what}: {len(got)} gradients, expected {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected)):
        close(g, e, f"{what} (parameter {k})", atol=atol, rtol=rtol)
