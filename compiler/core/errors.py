"""The one exception type for user errors (bad input, unmet accuracy thresholds)."""


class CompilerError(Exception):
    """Bad input or an unmet threshold: the CLI shows it as one line, no traceback, exit code 2.

    The message names the input, the value and the limit, and the fix when there is one.
    Anything else raised by the package is a bug and keeps its traceback.
    """
