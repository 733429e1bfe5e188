"""Training data: the phantom (generated directory or on the fly); real layouts follow the same item form.

An item is a dict: `image` float32 (1, R, R) in [-1, 1]; `labels` float32 (14,) with 1 positive,
0 otherwise (uncertain counted as 0: U-Zeros, stated); `text` the canonical condition text the
refiner makes of the report; `identity` an integer that is equal for the same person.
"""
