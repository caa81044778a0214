"""quantsim: energy-aware post-training quantization with the hardware in the loop."""
__version__ = "0.1.0"
