"""Typed errors. Every user mistake raises one of these with a message naming the problem.

The CLI maps ``UsageError`` to exit code 2 and every other ``VoxpromptError`` to exit code 3;
servers map them to 4xx responses.
"""
from __future__ import annotations


class VoxpromptError(Exception):
    """Base class of all errors caused by bad input (never by a bug)."""

    exit_code = 3


class UsageError(VoxpromptError, ValueError):
    """A wrong argument: unknown name, bad option value, malformed prompt string."""

    exit_code = 2


class UnknownModelError(UsageError, KeyError):
    """A model name that is not in the zoo."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(VoxpromptError):
    """A checkpoint that cannot be read, is unsafe to read, or does not fit the architecture."""


class InputError(VoxpromptError, ValueError):
    """A tensor or array of the wrong shape, dtype, range or content."""


class PromptError(InputError):
    """A point, box or mask prompt that is malformed or outside the image."""


class SessionFileError(VoxpromptError):
    """A saved session file that is missing, truncated, corrupt, malformed or of an unknown format version."""


class SessionTooLarge(SessionFileError):
    """A saved session state that would unpack to more bytes than the caller allows (servers answer 413)."""


class ImageReadError(VoxpromptError):
    """An image file that is missing, truncated, corrupt, unsupported or absurd."""


class ImageTooLarge(ImageReadError):
    """An image whose header declares more voxel bytes than the caller allows (servers answer 413)."""
