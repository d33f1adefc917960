"""Data sources: each kind of data spec is a :class:`DataSource`, found by :func:`find_source`.

``DATA_SOURCES`` holds them in order of precedence: :func:`~dia.data.load_data` loads a spec
with the first source that matches it (the built-in ones are in :mod:`dia.data.builtin`);
:func:`register_source` adds one after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from dia.data.errors import DataError
from dia.registry import Registry

if TYPE_CHECKING:
    import torch

    from dia.config import DataConfig
    from dia.data.types import ImageData


class DataSource:
    """One kind of data spec: which specs it takes (:meth:`matches`) and how it reads them.

    A new source sets ``name`` (``data.info["source"]``), ``form`` and ``about`` (how its specs
    are written and what they name: its line in the accepted specs that errors list), defines
    :meth:`matches` and :meth:`load`, and is registered with :func:`register_source`.
    :func:`~dia.data.load_data` then resizes what it loads, sets its channels, holds out a
    validation split and contaminates it, as for every source. ``matches`` sees the spec with
    the spaces around it removed.
    """

    name: ClassVar[str] = ""
    form: ClassVar[str] = ""
    about: ClassVar[str] = ""

    def matches(self, spec: str) -> bool:
        """Whether this source reads data spec ``spec``."""
        raise NotImplementedError

    def load(self, config: DataConfig) -> ImageData:
        """The data set of ``config.spec``, at ``config.image_size`` or the source's own size."""
        if type(self).load_with_abnormal is DataSource.load_with_abnormal:
            raise NotImplementedError(f"{type(self).__name__} defines no load")
        return self.load_with_abnormal(config)[0]

    def load_with_abnormal(
        self, config: DataConfig
    ) -> tuple[ImageData, torch.Tensor, torch.Tensor | None]:
        """:meth:`load`'s data, the abnormal training images the source holds (contamination
        and ``val_fraction`` draw from them; none by default) and their groups (None: one
        image a group). A source that holds some defines this, and :meth:`load` comes from it.
        """
        data = self.load(config)
        return data, data.train[:0], None

    def load_test(self, config: DataConfig) -> ImageData | None:
        """The test images alone, read without the other splits, at ``config.image_size`` (an
        external test set, :func:`~dia.data.load_test_set`); None (the default): the test
        split that :meth:`load` gives."""
        return None


# Every source by name, in order of precedence.
DATA_SOURCES: Registry[type[DataSource]] = Registry("data source", DataSource)
register_source = DATA_SOURCES.register


def spec_forms() -> str:
    """The accepted data specs, one line a source, for error messages."""
    lines = [f"  {cls.form:<21} {cls.about}" for cls in DATA_SOURCES.values() if cls.form]
    return "accepted data specs:\n" + "\n".join(lines)


def find_source(spec: str) -> DataSource:
    """The first registered source that matches ``spec`` (spaces around it removed), or a
    DataError listing the accepted specs."""
    spec = spec.strip()
    for cls in DATA_SOURCES.values():
        source = cls()
        if source.matches(spec):
            return source
    if Path(spec).expanduser().is_file():
        raise DataError(f"data spec {spec!r} is a file but not a .npz or .csv file; {spec_forms()}")
    raise DataError(
        f"data spec {spec!r} is not a known source nor an existing path; {spec_forms()}"
    )
