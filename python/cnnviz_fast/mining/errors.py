"""Errors the miner raises; each message is meant for the person running it (the CLI prints it
as is, without a traceback)."""
from __future__ import annotations


class MiningError(Exception):
    """Mining cannot start or go on; str(error) says why and what to do."""


class RunLocked(MiningError):
    """Another miner holds the output folder's lock."""


class ConfigMismatch(MiningError):
    """The output folder holds a run of another configuration (and overwrite was not asked for)."""


class DeviceUnavailable(MiningError):
    """device="cuda" was asked for but cannot be used here."""


class ErrorRateExceeded(MiningError):
    """More images failed than `max_error_rate` allows; `summary` holds the run's summary (the
    results of the images that did decode are written all the same)."""

    def __init__(self, message: str, summary):
        super().__init__(message)
        self.summary = summary
