"""
A plausible mistake for assignment 3: no clamping. k is not clamped to [0, K] (past K
the schedules leave [r_end, r_init]: the linear one even turns negative), and l is
not clamped to t - 1e-4 (with a tiny r, l comes so close to t that the weight
1 / (t - l) of Eq. 15 explodes and, in float32, t - l is mostly rounding error).
The schedules agree at 0 <= k <= K, so the ablation still runs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_k_is_clamped_to_0_K', 'test_intermediate_time')

reference_with(globals(),
    ('u = min(max(k, 0), K) / K',
     'u = k / K'),   # mistake: no clamp
    ('return torch.minimum(t + (s - t) * r, t - gap)',
     'return t + (s - t) * r'))   # mistake: no clamp
