"""The one exception type for mistakes a user can make and fix."""


class DeconvNetError(ValueError):
    """Bad input from the user: an unknown layer, a channel out of range, a bad file.

    The message says what is wrong and what would be valid. The CLI prints it as one line and
    exits with status 2; from Python it is an ordinary ``ValueError`` subclass.
    """
