"""
A plausible mistake for assignment 4: v_mix used for every sample, also those whose
label was dropped. Their "guided" velocity is then the unconditional one, and the
unconditional model, which v_uncond and hence the guidance are built on, is
trained on a guided target instead of the plain v_c.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_guided_target', 'test_guidance_separates_the_classes')

reference_with(globals(),
    ('return torch.where(_bc(keep, v_c), v_mix, v_c)',
     'return v_mix'))   # mistake: dropped labels need v_c
