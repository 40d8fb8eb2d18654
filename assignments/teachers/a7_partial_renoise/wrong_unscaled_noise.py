"""
A plausible mistake for assignment 7: the fresh noise's variance taken as
beta(t)^2 - beta(u)^2, forgetting that the noise already in x_u is scaled by
alpha(t) / alpha(u) < 1 too. The samples come out too narrow. At u = 0 (gamma = 1)
and u = t (gamma = 0) nothing changes, so the released sampler and the chain pass.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_forward_kernel', 'test_exact_in_distribution_for_every_gamma', 'test_sweep')

reference_with(globals(),
    ('    return scale, math.sqrt(max(beta_t**2 - (scale * beta_u) ** 2, 0.0))   # max: round-off at u = t',
     '    return scale, math.sqrt(max(beta_t**2 - beta_u**2, 0.0))'))   # mistake: the old noise is scaled too
