"""Home Assistant value templates, evaluated in jinja2's sandbox with the subset HA users rely on.

An MQTT discovery config's ``value_template`` (``{{ value_json.temperature | float }}``) is a
Jinja template that Home Assistant renders with ``value`` (the payload as text) and
``value_json`` (the payload parsed as JSON, undefined when it is not JSON). `compile_template`
checks it once, when the config arrives; `ValueTemplate.render` runs it per state message.

The environment is `jinja2.sandbox.SandboxedEnvironment` (no attribute access to internals, no
calling of unsafe methods, ranges capped), plus bounds of our own: a template's source length,
string/list repetition and powers, and the rendered output's length.

Supported subset (what the ecosystems' discovery configs use; HA semantics where HA defines
them, https://www.home-assistant.io/docs/configuration/templating/):

- variables ``value``, ``value_json``;
- filters and functions ``float(default)``, ``int(default, base)``, ``bool(default)``,
  ``round(precision, method, default)`` (methods common, ceil, floor, half), ``multiply``,
  ``add``, ``log``, ``sqrt``, ``iif(if_true, if_false, if_none)``, ``is_defined``,
  ``is_number``, ``min``/``max``, ``to_json``/``from_json``, ``regex_replace``,
  ``regex_search``, ``regex_match``, ``bitwise_and``/``bitwise_or``, ``ord``,
  ``base64_decode``; every jinja2 builtin filter and test (``default``/``d``, ``abs``,
  ``lower``, ``replace``, ``trim``, ``first``...); tests ``is_number``, ``match``, ``search``.

What is not supported is refused when the config arrives (`TemplateProblem`): HA's state
machine (``states()``, ``is_state()``, ``state_attr()``, ``this``...), time (``now()``,
``as_timestamp``, ``timestamp_custom``: HA's time zone) and any other name HA defines outside
this list.

A template that is a bare JSON path (``{{ value_json.a['b'] }}``, what Zigbee2MQTT, Tasmota
and Shelly scripts publish) is looked up directly, with jinja's result (jinja renders the rest).

Rendering outcomes: a string (HA's own result, e.g. ``"21.5"`` or ``"True"``); `NoValue` when
the message does not carry the entity's value (an undefined JSON path, ``is_defined`` of an
absent key, ``float`` of null: HA logs and keeps the old state, homeedge stores nothing and
counts it); `TemplateProblem` for anything else (a conversion of a real value that fails, a
sandbox violation): the adapter dead-letters it as ``adapter_template``.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

MAX_TEMPLATE_CHARS = 4096
MAX_OUTPUT_CHARS = 4096
MAX_REPEAT = 10_000  # "x" * n, [..] * n
MAX_EXPONENT = 1_000

_SENTINEL: Any = object()
VARIABLES = frozenset({"value", "value_json"})


class NoValue(Exception):
    """The message does not carry the entity's value (not an error)."""


class TemplateProblem(Exception):
    """A template that cannot be compiled or evaluated here."""


def _no_value_for(value: Any) -> bool:
    return value is None or isinstance(value, jinja2.Undefined)


def _fail(name: str, value: Any) -> Any:
    if _no_value_for(value):
        raise NoValue(f"{name} of an absent value")
    raise TemplateProblem(f"{name} got invalid input {value!r} and no default was given")


def ha_float(value: Any, default: Any = _SENTINEL) -> Any:
    try:
        return float(value)
    except (ValueError, TypeError, jinja2.UndefinedError):
        return _fail("float", value) if default is _SENTINEL else default


def ha_int(value: Any, default: Any = _SENTINEL, base: int = 10) -> Any:
    try:
        if isinstance(value, str) and base != 10:
            return int(value, base)
        if isinstance(value, str):
            return int(float(value)) if not value.strip().lstrip("+-").isdigit() else int(value)
        return int(value)
    except (ValueError, TypeError, OverflowError, jinja2.UndefinedError):
        return _fail("int", value) if default is _SENTINEL else default


_TRUE = frozenset({"1", "true", "yes", "on", "enable"})
_FALSE = frozenset({"0", "false", "no", "off", "disable"})


def ha_bool(value: Any, default: Any = _SENTINEL) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return _fail("bool", value) if default is _SENTINEL else default


def ha_round(
    value: Any, precision: int = 0, method: str = "common", default: Any = _SENTINEL
) -> Any:
    number = ha_float(value, default=_SENTINEL if default is _SENTINEL else None)
    if number is None:
        return default
    if method == "ceil":
        out = math.ceil(number * 10**precision) / 10**precision
    elif method == "floor":
        out = math.floor(number * 10**precision) / 10**precision
    elif method == "half":
        out = round(number * 2) / 2.0
    else:
        out = round(number, precision)
    return int(out) if precision == 0 and method != "half" else out


def ha_multiply(value: Any, amount: Any, default: Any = _SENTINEL) -> Any:
    number = ha_float(value, default=_SENTINEL if default is _SENTINEL else None)
    return default if number is None else number * float(amount)


def ha_add(value: Any, amount: Any, default: Any = _SENTINEL) -> Any:
    number = ha_float(value, default=_SENTINEL if default is _SENTINEL else None)
    return default if number is None else number + float(amount)


def ha_log(value: Any, base: float = math.e, default: Any = _SENTINEL) -> Any:
    number = ha_float(value, default=_SENTINEL if default is _SENTINEL else None)
    if number is None:
        return default
    try:
        return math.log(number, float(base))
    except (ValueError, ZeroDivisionError):
        return _fail("log", value) if default is _SENTINEL else default


def ha_sqrt(value: Any, default: Any = _SENTINEL) -> Any:
    number = ha_float(value, default=_SENTINEL if default is _SENTINEL else None)
    if number is None:
        return default
    if number < 0:
        return _fail("sqrt", value) if default is _SENTINEL else default
    return math.sqrt(number)


def iif(value: Any, if_true: Any = True, if_false: Any = False, if_none: Any = _SENTINEL) -> Any:
    if value is None and if_none is not _SENTINEL:
        return if_none
    return if_true if value else if_false


def is_defined(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        raise NoValue("is_defined of an undefined value")
    return value


def is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        number = float(value)
    except (ValueError, TypeError):
        return False
    return math.isfinite(number)


def _minmax(pick: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        if len(args) == 1:
            return pick(args[0])
        return pick(args)

    return run


def from_json(value: Any) -> Any:
    try:
        return json.loads(value)
    except (ValueError, TypeError) as exc:
        raise TemplateProblem(f"from_json: {exc}") from None


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _regex(pattern: str, ignorecase: bool) -> re.Pattern[str]:
    if len(pattern) > 256:
        raise TemplateProblem("regex longer than 256 characters")
    return re.compile(pattern, re.IGNORECASE if ignorecase else 0)


def regex_replace(value: Any, find: str = "", replace: str = "", ignorecase: bool = False) -> str:
    return _regex(find, ignorecase).sub(replace, str(value))


def regex_match(value: Any, find: str = "", ignorecase: bool = False) -> bool:
    return bool(_regex(find, ignorecase).match(str(value)))


def regex_search(value: Any, find: str = "", ignorecase: bool = False) -> bool:
    return bool(_regex(find, ignorecase).search(str(value)))


def bitwise_and(first: Any, second: Any) -> int:
    return int(first) & int(second)


def bitwise_or(first: Any, second: Any) -> int:
    return int(first) | int(second)


def base64_decode(value: Any) -> str:
    try:
        return base64.b64decode(str(value)).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise TemplateProblem(f"base64_decode: {exc}") from None


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "float": ha_float,
    "int": ha_int,
    "bool": ha_bool,
    "iif": iif,
    "is_number": is_number,
    "min": _minmax(min),
    "max": _minmax(max),
    "log": ha_log,
    "sqrt": ha_sqrt,
}
_FILTERS: dict[str, Callable[..., Any]] = {
    **_FUNCTIONS,
    "round": ha_round,
    "multiply": ha_multiply,
    "add": ha_add,
    "is_defined": is_defined,
    "to_json": to_json,
    "from_json": from_json,
    "regex_replace": regex_replace,
    "regex_match": regex_match,
    "regex_search": regex_search,
    "bitwise_and": bitwise_and,
    "bitwise_or": bitwise_or,
    "ord": ord,
    "base64_decode": base64_decode,
}
_TESTS: dict[str, Callable[..., Any]] = {
    "is_number": is_number,
    "match": regex_match,
    "search": regex_search,
}


class _BoundedSandbox(SandboxedEnvironment):
    """The sandbox, with repetition and powers bounded (a template must not eat the memory)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise TemplateProblem(f"exponent {right!r} is too large")
            return left**right
        for seq, times in ((left, right), (right, left)):
            sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
            if sized and times * max(len(seq), 1) > MAX_REPEAT:
                raise TemplateProblem("repetition too large")
        return left * right


def _environment() -> SandboxedEnvironment:
    env = _BoundedSandbox(autoescape=False, undefined=jinja2.Undefined)
    env.filters.update(_FILTERS)
    env.tests.update(_TESTS)
    env.globals.update(_FUNCTIONS)
    return env


_ENV = _environment()
_KNOWN_NAMES = VARIABLES | frozenset(_ENV.globals)


# ``{{ value_json.a['b'].c }}``: most discovery templates (Zigbee2MQTT, Tasmota, Shelly) are a
# bare JSON path, which is looked up directly: a jinja render costs a context per call.
_PATH_TEMPLATE = re.compile(
    r"""^\{\{-?\s*value_json((?:\.[A-Za-z_][A-Za-z0-9_]*|\[(?:'[^'\\]*'|"[^"\\]*"|\d+)\])+)\s*-?\}\}$"""
)
_PATH_PART = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_]*)|\[(?:'([^']*)'|"([^"]*)"|(\d+))\]""")


def _json_path(source: str) -> tuple[str | int, ...] | None:
    match = _PATH_TEMPLATE.match(source.strip())
    if match is None:
        return None
    path: list[str | int] = []
    for attr, single, double, index in _PATH_PART.findall(match.group(1)):
        key = attr or single or double
        if attr and hasattr(dict, attr):
            return None  # value_json.items is the dict's method in jinja: leave it to jinja
        path.append(int(index) if index else key)
    return tuple(path)


class ValueTemplate:
    """One compiled value template."""

    __slots__ = ("_path", "_template", "source")

    def __init__(self, source: str, template: jinja2.Template) -> None:
        self.source = source
        self._template = template
        self._path = _json_path(source)

    def _lookup(self, path: tuple[str | int, ...], value_json: Any) -> str | None:
        """The bare path's result as jinja renders it; None: ask jinja (an odd shape)."""
        node = value_json
        last = len(path) - 1
        for i, key in enumerate(path):
            if isinstance(key, int) and isinstance(node, list) and -len(node) <= key < len(node):
                node = node[key]
            elif isinstance(node, dict) and not isinstance(key, int):
                if key not in node:
                    if i < last:
                        raise NoValue(f"no {key!r} in value_json")
                    return ""  # jinja's undefined renders as nothing
                node = node[key]
            else:
                return None
        return str(node)  # what jinja's rendering does with a value (None -> "None")

    def render(self, value: str, value_json: Any = _SENTINEL) -> str:
        """HA's result as text; `NoValue` or `TemplateProblem` (see the module docstring)."""
        if self._path is not None and value_json is not _SENTINEL:
            fast = self._lookup(self._path, value_json)
            if fast is not None:
                return fast.strip()
        variables: dict[str, Any] = {"value": value}
        if value_json is not _SENTINEL:
            variables["value_json"] = value_json
        try:
            out = self._template.render(variables)
        except (NoValue, TemplateProblem):
            raise
        except jinja2.UndefinedError as exc:
            raise NoValue(str(exc)) from None
        except jinja2.TemplateError as exc:  # the sandbox's SecurityError among them
            raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None
        except (ValueError, TypeError, ArithmeticError, LookupError, AttributeError) as exc:
            raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None
        if len(out) > MAX_OUTPUT_CHARS:
            raise TemplateProblem(f"output of {len(out)} characters")
        return out.strip()


def compile_template(source: str) -> ValueTemplate:
    """`source` compiled; `TemplateProblem` when it is not valid or uses what homeedge lacks."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateProblem(f"template of {len(source)} characters > {MAX_TEMPLATE_CHARS}")
    try:
        tree = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"syntax error: {exc.message}") from None
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        table = _ENV.filters if isinstance(node, nodes.Filter) else _ENV.tests
        if node.name not in table:
            kind = "filter" if isinstance(node, nodes.Filter) else "test"
            raise TemplateProblem(f"uses the {kind} {node.name!r}, which homeedge lacks")
    try:
        names = meta.find_undeclared_variables(tree)
    except jinja2.TemplateError as exc:
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None
    unknown = sorted(names - _KNOWN_NAMES)
    if unknown:
        raise TemplateProblem(f"uses {', '.join(unknown)}, which homeedge does not provide")
    try:
        return ValueTemplate(source, _ENV.from_string(tree))
    except jinja2.TemplateError as exc:
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None
