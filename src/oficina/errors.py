"""User-facing errors: raised anywhere, printed by the CLI as one line, never a traceback."""


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM, as systemd, Docker and Kubernetes send) ended a verb on purpose.

    Raised by the CLI's SIGTERM handler, so it takes the same path as Ctrl-C: what was finished
    is already saved (checkpoints, shards, the cache), the run is recorded ``stopped``, and
    rerunning the command resumes from there.
    """

    def __init__(self, signame: str = "SIGTERM"):
        super().__init__(signame)
        self.signame = signame


class UserError(Exception):
    """Something the user can fix (a missing file, a bad model spec, offline hub...).

    ``exit_code`` 2 means "the command line or config was wrong", 1 "the input was wrong".
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NotFound(UserError):
    """A file or folder named on the command line or in a config does not exist.

    Exit 2, "the command line was wrong", the same code the CLI gives an ``ENOENT`` from the
    OS, so every verb answers a mistyped path alike.
    """

    exit_code = 2
