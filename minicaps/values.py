"""What a number read from a file, an option or a library call must be: the type checks
every reader shares (a bool is not a number here, though Python counts it as one)."""
import math

import numpy as np


def is_int(value):
    """A whole number: a Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value):
    """A real number: a Python or NumPy integer or float, not a bool (NaN and inf count)."""
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


def is_finite_real(value):
    """A real number that is neither NaN nor infinite."""
    return is_real(value) and math.isfinite(value)
