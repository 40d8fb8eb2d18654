"""
A plausible mistake for assignment 5: the "deterministic" sampler jumps to data at
every step, x <- f(x, t_i, 0), and then treats that data estimate as the state at
t_{i+1}, as if re-noising without noise. Even with the exact map each later jump
moves a data point further, so the chain is no longer exact.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mistakes import reference_with  # noqa: E402

CAUGHT_BY = ('test_chain_is_exact_with_the_exact_map', 'test_chain_calls_f_once_per_step', 'test_samplers_match_soflow_on_a_network', 'test_compare')

reference_with(globals(),
    ('x = f(x, t, s)',
     'x = f(x, t, 0.0)'))   # mistake: should be f(x, t, s)
