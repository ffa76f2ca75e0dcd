"""The one exception type for mistakes a user can make (bad config, missing file, offline hub).

The CLI turns it into one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message is one line naming the field/file and what is allowed."""

    exit_code = 2


def first_line(e: BaseException, limit: int = 200) -> str:
    """'Type: first non-empty line of the message' (cut to `limit`), or 'Type' when it has none: how an
    exception from a library is named in a one-line error or notice."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__


# A run stopped by SIGUSR1/SIGTERM exits with this after its checkpoint (EX_TEMPFAIL): requeue and
# resume it. Here, not in the trainer, so torch-free code (the sweep runner) can read it.
EXIT_PREEMPTED = 75


class RunFailed(UserError):
    """A run that could not go on for a reason outside the code (disk full, checkpoint unreadable):
    one line, like a UserError, but exit code 1; summary.json records the reason."""

    exit_code = 1


# A run whose loss or gradient norm became non-finite stops with this (summary status "diverged").
EXIT_DIVERGED = 3
# A run stopped by Ctrl-C after writing its checkpoint (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130

# How a sweep runner tells a trial that the SIGTERM it is about to send is a stop (hyperband), not a
# preemption: it sets this variable to a file path when it starts the trial and creates the file
# before signalling. The trainer then finishes as "stopped" with exit 0 instead of 75.
STOP_FILE_ENV = "BLUEBERRY_STOP_FILE"
