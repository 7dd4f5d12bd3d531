"""The one exception type the command line turns into a one-line message."""


class CertSegError(Exception):
    """A problem with the user's input or parameters, stated as `file: reason`."""
