"""The one exception type the CLI turns into a clean message and a non-zero exit (no traceback)."""


class SftpipeError(Exception):
    """A problem the user can fix: the message names the file/field/value and says how."""
