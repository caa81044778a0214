"""`python -m quantsim.pareto`: the command lives in quantsim.cli.pareto."""
import sys

from quantsim.cli.pareto import main

if __name__ == "__main__":
    sys.exit(main())
