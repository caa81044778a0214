"""`python -m quantsim.train`: the command lives in quantsim.zoo.train."""
import sys

from quantsim.zoo.train import main

if __name__ == "__main__":
    sys.exit(main())
