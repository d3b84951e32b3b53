"""The exceptions cnnviz_fast raises for problems a user can fix. Each message is meant for the
person running it: the CLI prints it as is, without a traceback, and maps the class to an exit
status in one table (`cli.EXIT_CODES`)."""
from __future__ import annotations


class CnnvizError(Exception):
    """Base of every user-facing error; str(error) says what is wrong and what to do.

    `params`: the parameters the message names, spelled as in the Python API and as they appear in
    the text ("top_k", "random_weights=True"); the CLI prints its own flags in their place
    (`cli.FLAGS`), so each caller reads the names it typed."""

    def __init__(self, *args, params: tuple[str, ...] = ()):
        super().__init__(*args)
        self.params = tuple(params)


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


# The default error budget (`mine(max_error_rate=)`, `--max-error-rate`): a run in which more than
# half of the images cannot be used is almost surely pointed at the wrong data and stops (exit 3).
MAX_ERROR_RATE = 0.5


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


class Interrupted(KeyboardInterrupt):
    """A long pass stopped by SIGINT (Ctrl-C) or SIGTERM. str(error) is the one line saying what
    was kept and how to go on ("" when there is nothing to say); `exit_status` is 128 + the
    signal's number (130 for SIGINT, 143 for SIGTERM), the shell's convention."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum, self.exit_status = int(signum), 128 + int(signum)


class ReportError(CnnvizError):
    """The report cannot be written (a full disk, a folder that cannot be written)."""
