"""What an invalid quota policy raises, and how each problem is written: ``file:line:col: message``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Loc = tuple[str, int, int]  # file, 1-based line, 1-based column
KeyPath = tuple[Any, ...]  # keys and list indexes from the top of a file: ("users", "alice", "gpus")


class PolicyError(Exception):
    """The quota files are invalid; ``errors`` holds one ``file:line:col: message`` per problem."""

    def __init__(self, errors: Sequence[str]):
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


def error_line(loc: Loc, message: str) -> str:
    """``quotas.yaml:12:5: users.bob.gpus must be >= 0 (got -1)``, on one line whatever the message."""
    return f"{loc[0]}:{loc[1]}:{loc[2]}: {' '.join(message.split())}"
