"""
A plausible mistake for assignment 4: the full strength w at every time, without the
decay of the guidance above t = 0.8 (soflow.guidance_decay). Eq. 19 is right; the
target differs from the released recipe's for t > 0.8.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_guided_target', 'test_guidance_separates_the_classes')

reference_with(globals(),
    ('w = _bc(1 + (cfg.guidance_scale - 1) * soflow.guidance_decay(cfg, t), v_c)',
     'w = cfg.guidance_scale'))   # mistake: no decay above t = 0.8
