"""The CLI's exit codes and the one-line failure a command raises.

Exit codes: 0 success, 1 runtime failure, 2 bad input (config, spec,
arguments, token, state dir in use), 128+N when a second signal N forced a
stop. :func:`tradingd.cli.main` maps every failure to its code in one place.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "CommandFailed"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CommandFailed(Exception):
    """A command could not do its job; ``str()`` is one line for the operator."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
