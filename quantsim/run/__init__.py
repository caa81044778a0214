"""Orchestration: one run (quantize, evaluate, check bit-exactness, simulate the hardware, report)
and the sweep of runs; the per-layer table is built here, once."""
