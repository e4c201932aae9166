"""One-line errors of the command line: the error type a front end prints as one line with exit status 2, and the
one-line texts of unexpected and disk errors."""

from __future__ import annotations

import errno


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


DEBUG_HELP = "on an unexpected error, show Python's traceback (without it: one line naming the error, exit status 2)"


def error_text(error: BaseException) -> str:
    """An unexpected error in one line: its type and first line (an actor's error: the error the actor raised)."""
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError
    if isinstance(cause, BaseException):
        error = cause
    return f"{type(error).__name__}: {first_line(error)}"


# A file that cannot be written: no space, quota, read-only filesystem, permission, too large, I/O error.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error` (itself, or what an actor raised: replay writes its own checkpoint files), or
    None for any other error."""
    if isinstance(error, OSError) and not hasattr(error, "cause"):
        return error
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError
    return cause if isinstance(cause, OSError) else None


def os_error_text(error: OSError) -> str:
    """'No space left on device (errno 28): /path' in one line."""
    if error.strerror:
        text = error.strerror if "errno" in error.strerror else f"{error.strerror} (errno {error.errno})"
        return f"{text}: {error.filename}" if error.filename else text
    return first_line(error)


def first_line(error: BaseException) -> str:
    """The error's message in one line (its first), or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
