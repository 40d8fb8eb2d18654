"""
A plausible mistake for assignment 2: the target f(x_l, l, s) computed with
gradients (no torch.no_grad / detach), so the loss pulls the target towards the
prediction as much as the prediction towards the target. The value of the loss is
right; its gradient is not, which the gradient checks catch.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ("test_target_is_a_stop_gradient", "test_gradient_matches_soflow",
             "test_stable_form_value_and_gradient", "test_training_learns_the_exact_solution_map")

reference_with(globals(),
    ('    with torch.no_grad():                                   # ... the target pass draws the same dropout',
     '    with torch.enable_grad():                               # mistake: the target keeps its gradient'),
    ('    with torch.no_grad():\n        f_l =',
     '    with torch.enable_grad():                               # mistake: the target keeps its gradient\n        f_l ='))
