"""The torch twin of integer_ref: the same integer program, batched; file for file like integer_ref."""
