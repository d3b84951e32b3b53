"""The exceptions cnnviz_fast raises for problems a user can fix. Each message is meant for the
person running it: the CLI prints it as is, without a traceback, and maps the class to an exit
status in one table (`cli.EXIT_CODES`)."""
from __future__ import annotations


class CnnvizError(Exception):
    """Base of every user-facing error; str(error) says what is wrong and what to do."""


class DeviceUnavailable(CnnvizError):
    """device="cuda" was asked for but cannot be used here."""


class ResultsError(CnnvizError):
    """results.db is missing, unreadable, or not a cnnviz_fast results database."""


class MinedModelError(ResultsError):
    """The model results.db was mined with cannot be had: its file is not recorded or gone, it does
    not load, or it is another model (its sha256 differs). `reason` is the problem without the
    advice (what to pass) that str(error) adds."""

    def __init__(self, reason: str, advice: str):
        super().__init__(f"{reason}; {advice}")
        self.reason = reason


class MiningError(CnnvizError):
    """Mining cannot start or go on."""


class RunLocked(MiningError):
    """Another cnnviz-fast process holds the output folder's lock."""


class ConfigMismatch(MiningError):
    """The output folder holds a run of another configuration (and overwrite was not asked for)."""


class ErrorRateExceeded(MiningError):
    """More images failed than `max_error_rate` allows; `summary` holds the run's summary (the
    results of the images that did decode are written all the same)."""

    def __init__(self, message: str, summary):
        super().__init__(message)
        self.summary = summary


class ProjectionError(CnnvizError):
    """The projection pass cannot run."""


class DemoError(CnnvizError):
    """The demo cannot run."""
