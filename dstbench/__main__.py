"""``python -m dstbench`` (also what ``torchrun -m dstbench`` starts)."""

from dstbench.cli import main

raise SystemExit(main())
