"""Held-out limits of a calibration profile (DESIGN §7, calibration), in a module of
their own so that the CLI's help can show them without importing the latency models.

An op whose 5-fold held-out MAPE or worst relative error exceeds them is refused unless the
profile lists it under quality.accepted. 10% is about the spread of kernel timings across input
data and clocks; a worst error of 25% is one point a quarter off.
"""

MAX_HELDOUT_MAPE = 0.10
MAX_HELDOUT_ERROR = 0.25
