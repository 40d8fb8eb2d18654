"""
A plausible mistake for assignment 6: the t-derivatives taken as minus the
s-derivatives, as in assignment 1. That holds when a and b depend on s - t only (the
Euler and trigonometric pairs); beta(s) / beta(t) does not.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_partial_derivatives_match_autograd',)

reference_with(globals(),
    ('    return da_ds, db_ds, da_dt, db_dt',
     '    return da_ds, db_ds, -da_ds, -db_ds'))   # mistake: a and b are not functions of s - t
