"""
A plausible mistake for assignment 7: the forward kernel of the linear schedule,
alpha = 1 - t and beta = t, whatever the noising schedule. Right for the linear
schedule, which most checks use; wrong for the trigonometric one.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_forward_kernel', 'test_exact_in_distribution_for_every_gamma',
             'test_gamma_1_is_the_released_sampler', 'test_sweep')

reference_with(globals(),
    ('    (alpha_u, beta_u), (alpha_t, beta_t) = coefficients(u), coefficients(t)',
     '    (alpha_u, beta_u), (alpha_t, beta_t) = (1 - u, u), (1 - t, t)'))   # mistake: the linear schedule only
