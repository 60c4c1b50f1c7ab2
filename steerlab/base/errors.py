"""The project's user-facing errors: bad input that the message tells the user how to fix.

Runners print these as one line and exit with status 2 (``steerlab.cli.options.main_guard``). Anything
else (a bug in torch, numpy or here) keeps its traceback. They subclass ValueError so callers that
catch bad values keep working.
"""


class UserError(ValueError):
    """Bad input, a missing prerequisite or an unusable model; the message says what to do."""


class DataError(UserError):
    """Bad data; the message names the file, the line and what to do."""


class ModelError(UserError):
    """The model cannot be used here; the message says what was expected."""


class StoreError(UserError):
    """The store cannot be read or written as asked."""
