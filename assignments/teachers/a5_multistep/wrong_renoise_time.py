"""
A plausible mistake for assignment 5: re-noising to the current time t_i instead of
the next one t_{i+1}. At t_0 = 1 that replaces the data estimate by pure noise
(alpha(1) = 0), which the next jump then treats as a point at t_1: the samples
come out too wide and no longer match the data distribution.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_renoise_is_exact_in_distribution', 'test_samplers_match_soflow_on_a_network', 'test_compare')

reference_with(globals(),
    ('alpha, beta, _, _ = (float(c) for c in soflow.schedule(schedule, torch.tensor(float(times[i + 1]))))',
     'alpha, beta, _, _ = (float(c) for c in soflow.schedule(schedule, torch.tensor(float(times[i]))))'))   # mistake: t_i, not t_{i+1}
