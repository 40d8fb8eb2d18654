"""
A plausible mistake for assignment 5: re-noising with the linear schedule's
coefficients, x = (1 - t) x0 + t eps, whatever the noising schedule. Right for the
linear schedule (all the distribution checks use it), wrong for the trigonometric
one, where x_t = cos(pi t / 2) x0 + sin(pi t / 2) eps.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_samplers_match_soflow_on_a_network',)

reference_with(globals(),
    ('alpha, beta, _, _ = (float(c) for c in soflow.schedule(schedule, torch.tensor(float(times[i + 1]))))',
     'alpha, beta = 1 - times[i + 1], times[i + 1]'))   # mistake: the linear schedule only
