"""One exception type for problems the user can fix; the CLI prints it as a one-line error."""


class BCLMError(ValueError):
    """Bad input: a file, field or value that is not what bclm expected. The message names it."""
