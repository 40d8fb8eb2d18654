"""
A plausible mistake for assignment 2: the Euler step to x_l taken with the wrong
sign, x_l = x_t + v (t - l): a step back towards the noise instead of down the
trajectory towards the data. Every check of the value, the gradient and the
training run fails; the dropout check, which only compares masks, passes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ("test_loss_value_is_eq14_with_eq15", "test_target_is_a_stop_gradient",
             "test_gradient_matches_soflow", "test_stable_form_value_and_gradient",
             "test_training_learns_the_exact_solution_map")

reference_with(globals(),
    ('_bc(l - t, x_t) * v_target                  # one Euler step from t down to l',
     '_bc(t - l, x_t) * v_target                  # mistake: should be (l - t)'),
    ('_bc(l - t, x_t) * v_target\n',
     '_bc(t - l, x_t) * v_target   # mistake: should be (l - t)\n'))
