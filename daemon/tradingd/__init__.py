"""tradingd: a long-running trading-research daemon with bounded memory."""

from __future__ import annotations

__version__ = "0.1.0"
