"""``python -m tradingd`` is the ``tradingd`` command."""

from __future__ import annotations

import sys

from tradingd.cli import main

sys.exit(main())
