"""Mixed precision: per-layer sensitivity, the width allocation (threshold and energy budget), plans."""
