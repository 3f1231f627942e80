"""User-facing errors: one line, exit code 2, no traceback unless --debug."""


class UserError(Exception):
    """A mistake in the user's config, data or command line.

    The message is one line that names the file, row or key at fault. The CLI prints it
    and exits with code 2; a Prefect task fails with the same message.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
