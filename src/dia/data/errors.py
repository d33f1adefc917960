"""The error every data source raises for bad input data or data settings."""


class DataError(ValueError):
    """Bad input data or data settings; the message says what was wrong and how to fix it."""
