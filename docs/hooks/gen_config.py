"""MkDocs hook: builds the Config reference page (``reference/config.md``) from the package.

Every table on that page is read, at build time, from the code that validates a run file: the
section dataclasses of :mod:`raybal.config.tree` (and ``[study]``'s ``StudySettings``), and the
params dataclass of every entry of the four registries (data sets, models, balancing methods,
corruptions). A knob's type, default and range come from its dataclass field, its description
from ``knob(doc=...)`` (``field.metadata["doc"]``). Nothing generated is committed: the
committed page is a stub whose marker this hook replaces, so the page cannot go stale.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import json
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from mkdocs.exceptions import PluginError

PAGE = "reference/config.md"
MARKER = "<!-- raybal:config-reference -->"

# Fields that carry no knob(doc=...) in the code but need a word here. Each key must exist: a
# renamed or removed field fails the build instead of leaving a stale note.
NOTES = {
    "data.cache_dir": "where generated data is cached (unset: $RAYBAL_CACHE, else ~/.cache/raybal)",
    "robustness.enabled": "run the sweep after training; a [robustness] section in the run file turns it on",
    "robustness.modalities": "modalities to corrupt (empty: all)",
    "train.select": "which epoch becomes the model: auto = target for a method with a target, else best_val",
    "study.objective": "the trials.parquet column to optimise (a validation metric)",
    "study.constraints": "'<column> <op> <number>' expressions, applied by raybal best and the summary",
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE}: the marker {MARKER!r} is missing; gen_config.py has nowhere to write")
    return markdown.replace(MARKER, reference())


# ----------------------------------------------------------------------------- the page


def reference() -> str:
    from raybal.balancing import METHODS
    from raybal.config import tree
    from raybal.data import DATASETS, LoaderKnobs
    from raybal.models import MODELS
    from raybal.noise import CORRUPTIONS
    from raybal.study.objectives import StudySettings

    seen: set[str] = set()
    out: list[str] = ["## Sections", ""]
    selectors = {"data": ("name", DATASETS), "model": ("name", MODELS), "balance": ("method", METHODS)}
    for section, cls in (("data", tree.DataConfig), ("model", tree.ModelConfig), ("balance", tree.BalanceConfig),
                         ("train", tree.TrainConfig), ("robustness", tree.RobustnessConfig),
                         ("study", StudySettings)):
        out += [f"### `[{section}]`", ""]
        doc = _paragraph(cls)
        if doc:
            out += [_text(doc.split(": ", 1)[1] if doc.startswith(f"``[{section}]``: ") else doc), ""]
        if section == "study":
            out += ["Study files only (`raybal study run`), beside `[search]`.", ""]
        rows = _rows(cls, section, seen)
        if section in selectors:
            sel, reg = selectors[section]
            rows = [r if r[0] != f"`{section}.{sel}`" else
                    (r[0], r[1], r[2], "", f"one of {', '.join(f'`{n}`' for n in reg.names())}; the other keys "
                     f"are that entry's knobs (below)") for r in rows]
        out += _table(rows)
        if section == "data":
            out += ["### Every data set's pipeline knobs", "",
                    "Every `[data]` section takes these, whatever its `name` "
                    "(`[data.augment]` is a sub-table).", ""]
            out += _table(_rows(LoaderKnobs, "data", seen))

    loader = {f.name for f in dataclasses.fields(LoaderKnobs)}
    for title, section, sel, reg in (("Data sets", "data", "name", DATASETS), ("Models", "model", "name", MODELS),
                                     ("Balancing methods", "balance", "method", METHODS)):
        out += [f"## {title}", ""]
        for name in reg.names():
            entry = reg.get(name)
            out += [f"### `{section}.{sel} = \"{name}\"`", ""]
            doc = _entry_doc(reg, name)
            if doc:
                out += [_text(doc), ""]
            if entry.params is None:
                out += ["Takes no knobs.", ""]
                continue
            rows = _rows(entry.params, section, seen, skip=loader if section == "data" else set())
            out += _table(rows) if rows else ["Only the pipeline knobs above.", ""]

    out += ["## Corruptions", "",
            "Used by `[robustness] corruptions`; `[robustness] levels` replaces a corruption's default levels.", ""]
    out += ["| name | default levels | what it does |", "| --- | --- | --- |"]
    for name in CORRUPTIONS.names():
        entry = CORRUPTIONS.get(name)
        levels = ", ".join(f"{v:g}" for v in entry.meta.get("levels", (1.0,)))
        out.append(f"| `{name}` | {levels} | {_text(_entry_doc(CORRUPTIONS, name))} |")
    out.append("")
    missing = set(NOTES) - seen
    if missing:
        raise PluginError(f"gen_config.py NOTES name fields that do not exist: {', '.join(sorted(missing))}")
    return "\n".join(out)


def _rows(cls: type, prefix: str, seen: set[str], skip: set[str] = frozenset()) -> list[tuple[str, ...]]:
    """One row (key, type, default, range, doc) per init field; nested dataclasses are expanded."""
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, ...]] = []
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}.{f.name}", hints[f.name]
        if not f.init or f.name in skip or tp is Any:  # Any: a section's params, tabled per entry
            continue
        seen.add(key)
        if dataclasses.is_dataclass(tp):
            rows += _rows(tp, key, seen)
            continue
        meta = f.metadata
        doc = meta.get("doc") or NOTES.get(key, "")
        if meta.get("resource"):
            doc = "resource knob (left out of the config digest)" + (f"; {doc}" if doc else "")
        rows.append((f"`{key}`", _type_name(tp), _default(f), _range(meta, tp), _text(doc)))
    return rows


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    out = ["| key | type | default | range | description |", "| --- | --- | --- | --- | --- |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


# ----------------------------------------------------------------------------- cells


def _paragraph(obj: Any) -> str:
    """The first paragraph of an object's own docstring, on one line ("" for a dataclass's generated one)."""
    doc = inspect.getdoc(obj) or ""
    if isinstance(obj, type) and doc.startswith(f"{obj.__name__}("):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def _entry_doc(reg: Any, name: str) -> str:
    """What a registry entry is: for a data set its module's docstring (when the module defines only that
    entry; a builder's docstring says how it builds), else the entry's own docstring."""
    obj = reg.get(name).obj
    doc = ""
    if reg.kind == "data set":
        module = sys.modules[obj.__module__]
        if sum(reg.get(n).obj.__module__ == obj.__module__ for n in reg.names()) == 1:
            doc = _paragraph(module)
    doc = doc or _paragraph(obj)
    doc = doc.removeprefix(f"``{name}``: ").replace("**", "")
    doc = doc[:-2] + "." if doc.endswith("::") else doc
    return doc[:1].upper() + doc[1:]


def _text(s: str) -> str:
    """Markdown for a table cell: code spans kept, other text without HTML, pipes, emphasis or links."""
    out = []
    for i, part in enumerate(s.replace("``", "`").split("`")):
        if i % 2 and "|" not in part:
            out.append(f"`{part}`")
            continue
        part = html.escape(part, quote=False)
        for ch in "|*_[]":
            part = part.replace(ch, f"&#{ord(ch)};")
        out.append(part)
    return "".join(out)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{json.dumps(a)}`" for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        name = " or ".join(_type_name(a) for a in args)
        return f"{name} (or unset)" if len(args) < len(get_args(tp)) else name
    if origin is tuple:
        inner = _type_name(get_args(tp)[0])
        return f"list, each {inner}" if inner.startswith("one of") else f"list of {inner}"
    if origin in (Mapping, dict) or getattr(tp, "__name__", "") == "FrozenMap":
        args = get_args(tp)
        return f"table of {_type_name(args[1])}" if len(args) == 2 else "table"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "unset"
    return f"`{_toml(value)}`"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def _range(meta: Mapping[str, Any], tp: Any) -> str:
    parts = [f"{op} {meta[k]:g}" for k, op in (("ge", "&gt;="), ("gt", "&gt;"), ("le", "&lt;="), ("lt", "&lt;"))
             if meta.get(k) is not None]
    text = ", ".join(parts)
    origin = get_origin(tp)
    container = origin in (tuple, Mapping, dict) or getattr(tp, "__name__", "") == "FrozenMap"
    if text and container:
        text += " (each value)"
    if meta.get("fractions"):
        text = (text + "; " if text else "") + "fractions summing to 1"
    return text
