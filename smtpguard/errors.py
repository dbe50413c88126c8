"""Errors that are the operator's to fix, not the program's.

Anything raised as :class:`UserError` reaches the operator as one line on
stderr and exit code 2 (the CLI's convention for "bad input"), never as a
traceback. Code that detects bad input raises a subclass naming the problem.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a config file, a CLI argument, an import file, a database."""

    exit_code = 2


class ConfigError(UserError):
    """The configuration file is unreadable, has unknown keys, or impossible values."""


class StoreError(UserError):
    """The database is unreadable, corrupt, locked or of a newer schema.

    ``transient`` marks a failure that goes away by itself (another process
    holds the write lock, the disk is full, an I/O error): nothing was written,
    and the same write may simply be tried again later.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class AddressError(UserError):
    """A mail address (or domain) that cannot be parsed or normalised."""
