"""Griffe extension for the API page: Sphinx cross-reference roles in docstrings as code.

raybal's docstrings name other objects with Sphinx roles (``:class:`ConfigError```,
``:func:`~raybal.resolve.load_config```). mkdocstrings renders Markdown, where a role would show
as written; this turns each into a code span of the name (``~`` keeps its last part, as Sphinx does).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _name(m: re.Match[str]) -> str:
    tilde, target = m.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_name, obj.docstring.value)
