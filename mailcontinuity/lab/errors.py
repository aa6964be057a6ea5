"""The lab's one error type, apart from the modules that raise it."""


class LabError(Exception):
    """The lab could not do what was asked; the message says what to do about it."""
