"""
A plausible mistake for assignment 6: E[x0 | x] = beta' x - beta v, without dividing by
the determinant alpha beta' - alpha' beta. It is 1 for the linear schedule, which
hides the mistake there, and pi / 2 for the trigonometric one.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_denoiser_from_velocity',)

reference_with(globals(),
    ('    return (d_beta * x - beta * v) / (alpha * d_beta - d_alpha * beta)',
     '    return d_beta * x - beta * v'))   # mistake: the determinant is 1 only for the linear schedule
