"""``<column> <op> <number>`` constraints over result columns (``raybal best --constraint``,
``[study] constraints``, and the fault injector's conditions)."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raybal.config import ConfigError

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.@:-]+)\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+|true|false)\s*$")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str, key: str = "constraint") -> Constraint:
        m = _CONSTRAINT.match(text) if isinstance(text, str) else None
        if not m:
            raise ConfigError(key, f"cannot parse {text!r}; write e.g. \"final.val_accuracy >= 0.9\"")
        raw = m.group(3)
        try:
            value = {"true": 1.0, "false": 0.0}.get(raw)
            value = float(raw) if value is None else value
        except ValueError:
            raise ConfigError(key, f"cannot parse the number in {text!r}") from None
        return cls(m.group(1), m.group(2), value)

    def holds(self, value: Any) -> bool:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        return not math.isnan(v) and _OPS[self.op](v, self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"
