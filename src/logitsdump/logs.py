"""Logging set-up shared by every subcommand (`-l/--log-level`)."""

from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error", "fatal", "critical")
LOGGER_NAME = "logitsdump"


def get_logger(name: str | None = None) -> logging.Logger:
    """The package logger, or a child of it."""
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


def setup_logging(level: str = "info") -> None:
    """Send the package's log records to stderr at `level` (msit's level names)."""
    numeric = logging.FATAL if level == "fatal" else getattr(logging, level.upper())
    logger = get_logger()
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(numeric)
    logger.propagate = False
