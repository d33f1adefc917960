"""One shape for every extension point of dia (shifts, scores, dissolvers, data sources): a
base class, and a :class:`Registry` mapping each subclass's ``name`` to it, in the order they
were registered. Pure Python: the command line reads the names without loading torch."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict, Generic[T]):
    """Name -> class of one extension point: ``what`` names it in messages (``"shift"``), and
    every class registered is a subclass of ``base`` with a ``name`` of its own."""

    def __init__(self, what: str, base: type) -> None:
        super().__init__()
        self.what, self.base = what, base

    def register(self, cls: T) -> T:
        """Add ``cls`` as ``cls.name``; usable as a class decorator. A name is registered
        once: registering its class again changes nothing, another class is an error."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise ValueError(f"{cls!r} is not a {self.base.__name__} subclass")
        if not getattr(cls, "name", ""):
            raise ValueError(f"{cls.__name__} needs a name")
        if self.get(cls.name, cls) is not cls:
            raise ValueError(f"{self.what} {cls.name!r} is already registered ({self[cls.name]})")
        self[cls.name] = cls
        return cls

    def lookup(self, name: str) -> T:
        """The class registered as ``name``; a ValueError that names the choices otherwise."""
        if name not in self:
            raise ValueError(f"{self.what}={name!r}; expected one of {sorted(self)}")
        return self[name]
