"""
A plausible mistake for assignment 7: u = gamma t_{i+1} instead of (1 - gamma) t_{i+1},
the knob turned the other way: gamma = 0 re-noises fully and gamma = 1 chains. With
the exact map every u is exact in distribution, so only the checks of the two ends
and of the calls catch it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_calls_f_once_per_step_down_to_u', 'test_gamma_0_is_the_exact_chain',
             'test_gamma_1_is_the_released_sampler', 'test_sweep')

reference_with(globals(),
    ('        u = (1 - gamma) * t_next',
     '        u = gamma * t_next'))   # mistake: the knob reversed
