"""Exceptions that end a run with one line (run.py prints `error: <message>` and exits non-zero)."""
from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A bad configuration value; its message is one line."""


class ModelError(ConfigError):
    """A base model that cannot be obtained (offline, no access, package missing); one line saying what to set."""


class TrackingError(ConfigError):
    """W&B could not start a run that logger.required=true asks for (raised before any stage); one line."""


class DataError(ValueError):
    """Bad input data or a subset that cannot be drawn (e.g. a bucket smaller than data.size); one line."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived. A BaseException, so that no `except Exception` on the way swallows it;
    the stage it interrupted adds its name on the way out (recipe.Timer)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.stage: str | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def __str__(self) -> str:
        name = "SIGINT (Ctrl-C)" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
        where = f" during {self.stage}" if self.stage else ""
        return (f"interrupted by {name}{where}; nothing finished is lost: run the same command again to resume "
                f"(finished stages come from the cache, SFT from its last checkpoint)")
