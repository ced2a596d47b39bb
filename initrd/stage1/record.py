"""Frozen records for stage1 without ``dataclasses``: that import pulls in ~26 more modules (inspect, ast, dis,
tokenize, ...), several tenths of a second under TCG. Fields are the class's annotations, in order; a class
attribute of the same name is the default. Equality, hash and repr work like a frozen dataclass's.
"""

from __future__ import annotations


class Record:
    _fields: tuple[str, ...] = ()

    def __init_subclass__(cls) -> None:
        cls._fields = tuple(name for name in cls.__dict__.get("__annotations__", {}) if not name.startswith("_"))

    def __init__(self, *args: object, **kwargs: object) -> None:
        cls = type(self)
        if len(args) > len(cls._fields):
            raise TypeError(f"{cls.__name__} takes {len(cls._fields)} fields, got {len(args)}")
        values = dict(zip(cls._fields, args))
        for name, value in kwargs.items():
            if name not in cls._fields or name in values:
                raise TypeError(f"{cls.__name__}: unexpected or repeated field {name!r}")
            values[name] = value
        for name in cls._fields:
            if name not in values:
                if name not in cls.__dict__:
                    raise TypeError(f"{cls.__name__}: missing field {name!r}")
                values[name] = cls.__dict__[name]
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values() == self._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({inner})"
