"""`python -m quantsim.simulate`: the command lives in quantsim.cli.simulate."""
import sys

from quantsim.cli.simulate import main

if __name__ == "__main__":
    sys.exit(main())
