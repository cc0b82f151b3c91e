"""The one error type that users see: a single line naming the file or field and what was expected."""


class FactordiffError(Exception):
    """Bad input or an impossible request. The CLI prints its message on one line and exits with 2."""
