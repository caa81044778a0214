"""Capture of a PyTorch model as a float graph (torch.fx), its rewrites, and the float interpreter."""
