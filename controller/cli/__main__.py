"""``python -m controller.cli``: the same as the ``lrctl`` console script."""

from controller.cli import main

raise SystemExit(main())
