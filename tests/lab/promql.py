"""Instant evaluation of simple PromQL over one scrape, for checking that an example alert rule
would fire on what the endpoint serves.

Enough of PromQL for the rules' shape (selectors with label matchers, numbers, ``time()``,
arithmetic and comparisons, ``and``/``or``/``unless``, ``on()``/``ignoring()``); anything else is
an error, never a silent false. ``for:`` durations are not modelled: a rule's expression being
true now is what the tests ask.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Callable

import promql_parser

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
Value = Vector | float

_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_COMPARISON: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
    "<=": operator.le, ">=": operator.ge}


class Unsupported(Exception):
    """The expression uses PromQL this evaluator does not know."""


def evaluate(expr: str, samples: dict[tuple[str, Labels], float],
             now: float | None = None) -> Vector:
    """The instant vector ``expr`` yields on ``samples`` ((name, labels) -> value)."""
    result = _eval(promql_parser.parse(expr), samples, time.time() if now is None else now)
    if not isinstance(result, dict):
        raise Unsupported(f"{expr!r} is a scalar, not a rule expression")
    return result


def fires(expr: str, samples: dict[tuple[str, Labels], float]) -> bool:
    return bool(evaluate(expr, samples))


def _eval(node: object, samples: dict[tuple[str, Labels], float], now: float) -> Value:
    if isinstance(node, promql_parser.NumberLiteral):
        return float(node.val)
    if isinstance(node, promql_parser.ParenExpr):
        return _eval(node.expr, samples, now)
    if isinstance(node, promql_parser.Call) and node.func.name == "time":
        return now
    if isinstance(node, promql_parser.VectorSelector):
        return _select(node, samples)
    if isinstance(node, promql_parser.BinaryExpr):
        return _binary(node, _eval(node.lhs, samples, now), _eval(node.rhs, samples, now))
    raise Unsupported(f"{type(node).__name__} in {node}")


def _select(node: promql_parser.VectorSelector,
            samples: dict[tuple[str, Labels], float]) -> Vector:
    matchers = [(m.name, str(m.op), m.value) for m in node.matchers.matchers]
    found: Vector = {}
    for (name, labels), value in samples.items():
        if node.name and name != node.name:
            continue
        have = dict(labels)
        if all(_matches(have.get(label, ""), op, wanted) for label, op, wanted in matchers):
            found[labels] = value
    return found


def _matches(value: str, op: str, wanted: str) -> bool:
    if op.endswith("NotEqual"):
        return value != wanted
    if op.endswith("Equal"):
        return value == wanted
    if op.endswith("NotRe"):
        return not re.fullmatch(wanted, value)
    if op.endswith("Re"):
        return bool(re.fullmatch(wanted, value))
    raise Unsupported(f"matcher {op}")


def _key(labels: Labels, modifier: object) -> Labels:
    """The labels two sides are matched on (``on(...)`` keeps those, ``ignoring`` drops)."""
    if modifier is None or getattr(modifier, "matching", None) is None:
        return labels
    matching = modifier.matching  # type: ignore[attr-defined]
    names = set(matching.labels)
    if str(matching).startswith("ignoring"):
        return frozenset((k, v) for k, v in labels if k not in names)
    return frozenset((k, v) for k, v in labels if k in names)


def _binary(node: promql_parser.BinaryExpr, lhs: Value, rhs: Value) -> Value:
    op = str(node.op)
    if op in ("and", "or", "unless"):
        if not isinstance(lhs, dict) or not isinstance(rhs, dict):
            raise Unsupported(f"{op} needs two vectors")
        right = {_key(labels, node.modifier) for labels in rhs}
        if op == "and":
            return {k: v for k, v in lhs.items() if _key(k, node.modifier) in right}
        if op == "unless":
            return {k: v for k, v in lhs.items() if _key(k, node.modifier) not in right}
        left = {_key(labels, node.modifier) for labels in lhs}
        return {**lhs, **{k: v for k, v in rhs.items() if _key(k, node.modifier) not in left}}
    if op in _ARITHMETIC:
        return _apply(lhs, rhs, node, lambda a, b: _ARITHMETIC[op](a, b), keep_lhs_value=False)
    if op in _COMPARISON:
        return _apply(lhs, rhs, node, lambda a, b: a if _COMPARISON[op](a, b) else None,
                      keep_lhs_value=True)
    raise Unsupported(f"operator {op}")


def _apply(lhs: Value, rhs: Value, node: promql_parser.BinaryExpr,
           combine: Callable[[float, float], float | None], keep_lhs_value: bool) -> Value:
    if not isinstance(lhs, dict) and not isinstance(rhs, dict):
        result = combine(lhs, rhs)
        if keep_lhs_value:
            raise Unsupported("a comparison of two scalars needs bool")
        return float(result or 0.0)
    if isinstance(lhs, dict) and not isinstance(rhs, dict):
        pairs = [(labels, value, rhs) for labels, value in lhs.items()]
    elif not isinstance(lhs, dict) and isinstance(rhs, dict):
        out: Vector = {}
        for labels, value in rhs.items():
            combined = combine(lhs, value)
            if combined is not None:
                out[_drop_name(labels)] = value if keep_lhs_value else combined
        return out
    else:
        assert isinstance(lhs, dict) and isinstance(rhs, dict)
        right = {_key(labels, node.modifier): value for labels, value in rhs.items()}
        pairs = [(labels, value, right[_key(labels, node.modifier)])
                 for labels, value in lhs.items() if _key(labels, node.modifier) in right]
    result: Vector = {}
    for labels, a, b in pairs:
        combined = combine(a, b)
        if combined is not None:
            result[_drop_name(labels)] = a if keep_lhs_value else combined
    return result


def _drop_name(labels: Labels) -> Labels:
    return frozenset((k, v) for k, v in labels if k != "__name__")
