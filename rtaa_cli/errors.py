"""User-facing errors: the CLI prints these as one line, never as a traceback."""


class RtaaError(Exception):
    """An error caused by the user's input or environment (bad file, bad URL, bad option).

    ``exit_code`` follows the CLI convention: 2 for usage/input errors, 1 for a run that failed.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
