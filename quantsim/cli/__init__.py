"""The command line: argument parsing only. Each command turns its flags into the typed
options of quantsim.run (RunOptions, SweepOptions) and calls it; nothing here computes."""
