"""Python's, NumPy's and torch's CPU random generators, saved and restored."""
import contextlib
import random

import numpy as np
import torch


@contextlib.contextmanager
def saved_rng_state(seed=None):
    """Run the block with the random generators' states restored afterwards
    (and, with ``seed``, all three seeded from it first): drawing inside it
    leaves the random numbers of everything else unchanged."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
