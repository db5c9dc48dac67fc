"""`python -m genfast ...`, and so `torchrun --nproc_per_node=N -m genfast train MODEL ...`."""

from genfast.cli import main

raise SystemExit(main())
