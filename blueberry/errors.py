"""The one exception type for mistakes a user can make (bad config, missing file, offline hub).

The CLI turns it into one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message is one line naming the field/file and what is allowed."""


# A run stopped by SIGUSR1/SIGTERM exits with this after its checkpoint (EX_TEMPFAIL): requeue and
# resume it. Here, not in the trainer, so torch-free code (the sweep runner) can read it.
EXIT_PREEMPTED = 75
