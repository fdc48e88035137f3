"""The one exception type for errors a user can cause."""


class UserError(ValueError):
    """Bad input a user can fix: the CLI exits 2 with the message, the UI shows it."""
