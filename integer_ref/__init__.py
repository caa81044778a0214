"""integer_ref: the integer program (IR) and its NumPy/Numba reference executor. No torch here."""
