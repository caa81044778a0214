"""Quantization: the config, calibration statistics, scale search, and lowering to the integer program."""
