"""`python -m genfast.benchmarks [OP ...]`: the same as `genfast bench`."""

import sys

from . import main

sys.exit(main(sys.argv[1:]))
