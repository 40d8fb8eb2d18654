"""
A plausible mistake for assignment 6: the velocity head as db/ds F(x, t, t) alone, as
for soflow.py's two parameterizations, where da/ds(t, t) = 0. Here da/ds(t, t) =
beta'(t) / beta(t) is not 0 (1 / t for the linear schedule): the term da/ds x stays.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_velocity_is_the_s_derivative_of_the_solution',
             'test_velocity_of_the_exact_denoiser_is_the_marginal_velocity')

reference_with(globals(),
    ('    return _bc(da, x) * x + _bc(db, x) * net(x, t, t, y)',
     '    return _bc(db, x) * net(x, t, t, y)'))   # mistake: da/ds(t, t) x is not 0 here
