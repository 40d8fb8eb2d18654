"""
A plausible mistake for assignment 3: the cosine schedule written with (1 - cos)
instead of (1 + cos), so that it rises from r_end to r_init instead of falling.
The other three schedules are right; the ablation is not run until the schedule
tests pass.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_endpoints', 'test_monotone_non_increasing', 'test_closed_forms', 'test_k_is_clamped_to_0_K', 'test_ablation_produces_a_results_table')

reference_with(globals(),
    ('return r_end + (r_init - r_end) * (1 + math.cos(math.pi * u)) / 2',
     'return r_end + (r_init - r_end) * (1 - math.cos(math.pi * u)) / 2'))   # mistake: should be 1 + cos
