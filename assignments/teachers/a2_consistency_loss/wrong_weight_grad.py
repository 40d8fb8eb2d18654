"""
A plausible mistake for assignment 2: the adaptive factor 1 / (MSE / (t - l)^2 + eps)^p
of Eq. 15 computed from the MSE *with* its gradient. For p = 0 nothing changes;
for p > 0 the gradient is no longer w * grad(MSE) (for p = 1 and eps -> 0 it all
but vanishes, since w * MSE is then nearly constant). The stable form, written
correctly here, passes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ("test_gradient_matches_soflow",)

reference_with(globals(),
    ('weight = 1 / (dt * b.abs()) / (mse.detach() / dt.square() + cfg.eps) ** cfg.p   # Eq. 15, a constant',
     'weight = 1 / (dt * b.abs()) / (mse / dt.square() + cfg.eps) ** cfg.p   # mistake: mse not detached'))
