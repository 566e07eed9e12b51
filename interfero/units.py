"""Units and constants.

Angles on the sky are given in microarcseconds (uas) at the user interface and
in radians internally; baselines (u, v) are in wavelengths; flux densities in
Jy; times in hours (UTC); frequencies in Hz.
"""

import numpy as np

C_M_PER_S = 299_792_458.0
"""Speed of light in m/s."""

RAD_PER_DEG = np.pi / 180.0
RAD_PER_UAS = RAD_PER_DEG / 3600.0 / 1e6
"""Radians per microarcsecond."""

RAD_PER_HOUR_ANGLE = 15.0 * RAD_PER_DEG
"""Radians per hour of right ascension or hour angle."""

QUANTIZATION_EFFICIENCY = 0.88
"""2-bit quantisation efficiency used in the radiometer equation (as ehtim)."""


def uas_to_rad(x):
    """Microarcseconds to radians."""
    return x * RAD_PER_UAS


def rad_to_uas(x):
    """Radians to microarcseconds."""
    return x / RAD_PER_UAS
