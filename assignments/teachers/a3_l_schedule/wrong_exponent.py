"""
A plausible mistake for assignment 3: the exponential schedule with the ratio upside
down, r_init * (r_init / r_end)^(k/K), which grows instead of decaying.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_endpoints', 'test_monotone_non_increasing', 'test_closed_forms', 'test_k_is_clamped_to_0_K', 'test_ablation_produces_a_results_table')

reference_with(globals(),
    ('return r_init * (r_end / r_init) ** u',
     'return r_init * (r_init / r_end) ** u'))   # mistake: ratio inverted
