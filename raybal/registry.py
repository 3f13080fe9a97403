"""Name-keyed registries for data sets, models, balancing methods and corruptions.

Every pluggable concept in raybal is looked up by the name a user writes in a run file.
An entry optionally declares a *params* dataclass: the keys of its config section other
than the selector (``name`` / ``method``) are validated against it (see ``raybal.config``).
Registering a name twice is an error, so two modules cannot silently shadow each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    params: type | None
    doc: str


class Registry(Generic[T]):
    """A mapping from name to a registered object and its params dataclass."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, params: type | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, obj, params, doc[0] if doc else "")
            return obj

        return deco

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise KeyError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        return [(n, self._entries[n].doc) for n in self.names()]
