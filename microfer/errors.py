"""Errors microfer raises for bad input: the CLI prints them as one line, no traceback."""

from __future__ import annotations


class MicroferError(Exception):
    """Base class: the message names the file or clip and what was expected."""


class AnnotationError(MicroferError):
    """A coding/annotation file is not what its adapter expects."""


class LayoutError(MicroferError):
    """A dataset folder does not have the expected on-disk layout."""


class ClipError(MicroferError):
    """One clip cannot be used (unreadable frames, no face, too short...).

    `stage` (frames, face, motion...) is the preparation stage that refused the clip, as
    recorded in a cache's failures; None where no stage applies."""

    def __init__(self, message: str = "", stage: str | None = None):
        super().__init__(message)
        if stage is not None:
            self.stage = stage


class BundleError(MicroferError):
    """A model bundle is missing, foreign or tampered with."""
