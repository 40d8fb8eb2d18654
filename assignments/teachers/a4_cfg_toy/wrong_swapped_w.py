"""
A plausible mistake for assignment 4: w and 1 - w swapped in Eq. 19,
m (w v_uncond + (1 - w) v_c) + (1 - m) v_guided, which steers the samples towards
the unconditional field and away from their class. For w = 1 it even trains the
conditional model on the unconditional velocity.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_mix_velocity_is_eq19', 'test_guided_target', 'test_guidance_separates_the_classes')

reference_with(globals(),
    ('return m * (w * v_c + (1 - w) * v_uncond) + (1 - m) * v_guided',
     'return m * (w * v_uncond + (1 - w) * v_c) + (1 - m) * v_guided'))   # mistake: w and 1 - w swapped
