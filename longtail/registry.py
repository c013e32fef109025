"""One small registry type for every family of named options (losses, samplers, networks, heads,
finetune modes, dataset families).

A registry maps the names a user writes in ``params.yaml`` to objects, in registration order. It
refuses a duplicate name and answers an unknown one with the valid names, in one wording for every
registry (``docs/errors.md``)::

    loss.name: expected one of ce, focal, ...; got 'nope'
    loss.name: 'ce' is already registered

A registry may know names whose entries live in modules not imported yet (``lazy``: name ->
module); asking for such a name imports the module, which registers it. The data stages use this
to import only the dataset family they need.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind, keyed by the ``params.yaml`` key that names them.

    Args:
        key: the params key whose values are the names (``loss.name``), for messages.
        lazy: names registered by modules imported on first use (name -> module), listed first.
    """

    def __init__(self, key: str, lazy: Mapping[str, str] | None = None) -> None:
        self.key = key
        self.lazy = dict(lazy or {})
        self._entries: dict[str, T] = {}

    # ------------------------------------------------------------------ adding
    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; returns it. A name registered before is refused."""
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorator(entry: T) -> T:
            return self.add(name, entry)

        return decorator

    # ------------------------------------------------------------------ reading
    def names(self) -> tuple[str, ...]:
        """Every name, the lazily registered ones first, without importing their modules."""
        return (*self.lazy, *(name for name in self._entries if name not in self.lazy))

    def unknown(self, name: object) -> UnknownName:
        """The error for a name that is not registered."""
        return UnknownName(f"{self.key}: expected one of {', '.join(self.names())}; got {name!r}")

    def __getitem__(self, name: str) -> T:
        if name not in self._entries and name in self.lazy:
            importlib.import_module(self.lazy[name])  # registers it
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def loaded(self) -> dict[str, T]:
        """The entries registered so far (imports nothing)."""
        return dict(self._entries)

    def copy(self) -> Registry[T]:
        """A registry with the same key, lazy names and entries (tests register into a copy)."""
        twin: Registry[T] = Registry(self.key, self.lazy)
        twin._entries = dict(self._entries)
        return twin

    def __setitem__(self, name: str, entry: T) -> None:
        """Replace or add an entry without the duplicate check (tests patch registries so)."""
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
