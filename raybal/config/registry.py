"""Name-keyed registries for data sets, models, balancing methods and corruptions.

Every pluggable concept in raybal is looked up by the name a user writes in a run file. An
entry registers itself where it is defined, with a decorator::

    @METHODS.register("my_method", MyParams)
    class MyMethod(BalanceMethod): ...

and its package imports every module inside it (:func:`import_submodules`), so adding an
entry is one new file (plus its test). Each registry checks what it is given against the
protocol its kind must follow (a ``check`` function), when registering, not when first used.
An entry optionally declares a *params* dataclass: the keys of its config section other than
the selector (``name`` / ``method``) are validated against it (:mod:`raybal.resolve`).
Registering a name twice is an error, so two modules cannot silently shadow each other.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistrationError(TypeError):
    """An entry that does not provide what its registry's protocol asks for."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    params: type | None
    doc: str
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A mapping from name to a registered object, its params dataclass and metadata.

    ``check(name, obj, params)`` raises :class:`RegistrationError` when ``obj`` does not follow
    the protocol of this kind of entry.
    """

    def __init__(self, kind: str, check: Callable[[str, Any, type | None], None] | None = None) -> None:
        self.kind = kind
        self._check = check
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, params: type | None = None, **meta: Any) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if params is not None and not dataclasses.is_dataclass(params):
                raise RegistrationError(f"{self.kind} {name!r}: params must be a dataclass, got {params!r}")
            if self._check is not None:
                self._check(name, obj, params)
            self._entries[name] = Entry(name, obj, params, summary(getattr(obj, "__doc__", None)), dict(meta))
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a throwaway entry clean up with this)."""
        self._entries.pop(name, None)

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


_NOT_AN_END = ("al", "e.g", "i.e", "vs", "Eq")  # "Wu et al. 2022", "e.g. x": a dot that ends no sentence


def summary(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, whole (a summary may wrap over lines)."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    for i, ch in enumerate(para):
        ends = i + 1 == len(para) or para[i + 1] == " "
        if ch == "." and ends and not para[max(0, i - 3):i].endswith(_NOT_AN_END):
            return para[:i + 1]
    return para


def knobs(params: type | None) -> list[dict[str, Any]]:
    """An entry's knobs: name, default, range and doc of each field of its params dataclass."""
    from raybal.config.tree import thaw

    rows = []
    hints = typing.get_type_hints(params) if params is not None else {}
    for f in dataclasses.fields(params) if params is not None else ():
        default = thaw(f.default_factory()) if f.default_factory is not dataclasses.MISSING else f.default
        meta = f.metadata
        choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal else ()
        bounds = [f"{op} {meta[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                  if meta.get(k) is not None]
        rows.append({"name": f.name, "default": "required" if default is dataclasses.MISSING else default,
                     "range": " | ".join(map(repr, choices)) or ", ".join(bounds), "doc": meta.get("doc", "")})
    return rows


def require(kind: str, name: str, obj: Any, members: Iterable[str]) -> None:
    """Raise :class:`RegistrationError` naming the first of ``members`` that ``obj`` lacks."""
    for m in members:
        if not hasattr(obj, m):
            raise RegistrationError(f"{kind} {name!r}: {getattr(obj, '__name__', obj)!s} must provide `{m}`")


def import_submodules(package: str, path: Iterable[str], skip: Iterable[str] = ("base",)) -> None:
    """Import every module of a package so the entries defined in them register themselves."""
    skipped = set(skip)
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda i: i.name):
        if info.name not in skipped and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
