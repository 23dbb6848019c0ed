"""The one exception type users see: a one-line message that names the fix, never a traceback."""


class FrameBenchError(Exception):
    """A user-facing error; the CLI prints `error: <message>` and exits with status 2."""
