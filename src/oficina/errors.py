"""User-facing errors: raised anywhere, printed by the CLI as one line, never a traceback."""


class UserError(Exception):
    """Something the user can fix (a missing file, a bad model spec, offline hub...).

    ``exit_code`` 2 means "the command line or config was wrong", 1 "the input was wrong".
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
