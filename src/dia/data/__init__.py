"""Data sources: every one returns an :class:`ImageData` through :func:`load_data`."""

from dia.data.errors import DataError
from dia.data.sources import load_data, load_test_set
from dia.data.types import ImageData

__all__ = ["DataError", "ImageData", "load_data", "load_test_set"]
