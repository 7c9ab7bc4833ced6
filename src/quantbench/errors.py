"""The one exception type for mistakes a user can make; the CLI prints it as one line."""


class QuantbenchError(Exception):
    """A user-caused problem (bad model, precision, file, device) with a one-line message."""
