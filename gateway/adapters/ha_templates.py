"""Home Assistant value templates, evaluated in jinja2's sandbox with the subset HA users rely on.

An MQTT discovery config's ``value_template`` (``{{ value_json.temperature | float }}``) is a
Jinja template that Home Assistant renders with ``value`` (the payload as text) and
``value_json`` (the payload parsed as JSON, undefined when it is not JSON). `compile_template`
checks it once, when the config arrives; `ValueTemplate.render` runs it per state message.

The environment is `jinja2.sandbox.SandboxedEnvironment` (no attribute access to internals, no
calling of unsafe methods), plus bounds of our own, because any client on the broker can plant a
template and it renders on the MQTT network thread (a slow template stops all intake):

- at compile time the template's syntax tree is checked against an allow-list (`_ALLOWED_NODES`):
  output, ``{% if %}``, expressions (constants, ``value``/``value_json`` with attribute and item
  access, comparisons, ``and``/``or``/``not``, if-expressions, ``~``, arithmetic), filters, tests
  and calls of the helpers below and of a few read-only string methods (`_SAFE_METHODS`). Loops,
  ``set``, macros, call/filter blocks, ``with``, includes and imports are refused, and so are
  jinja's globals (``range``, ``namespace``, ``lipsum``, ``cycler``, ``joiner``, ``dict``): no
  construct can repeat work, so a render costs at most about the template's length in steps;
- sizes: a template's source length (`MAX_TEMPLATE_CHARS`); ``*`` on strings and lists and the
  ``replace``/``join`` filters (`MAX_STRING`); ``%`` on a string (printf formatting, whose width
  is unbounded) is refused; an integer result of arithmetic beyond ±2**63 and a power whose result
  would exceed it are refused before they are computed (`MAX_INT`); ``round``'s precision is at
  most 15; the rendered output's length (`MAX_OUTPUT_CHARS`);
- regexes (Python's ``re`` has no timeout, and a thread cannot be stopped): the pattern at most
  256 characters, the input at most `MAX_REGEX_INPUT` characters, no backreferences, no repeat
  inside a repeat, no alternation inside a repeat and at most two variable-length repeats
  (``?`` and ``{n}`` not counted; ``a*a*b`` on 256 characters takes about 0.01 s, ``a*a*a*b``
  would take 1 s). That rules out catastrophic backtracking (``(a+)+$``, ``(a|aa)*``) and
  bounds the polynomial cases.

Supported subset (what the ecosystems' discovery configs use; HA semantics where HA defines
them, https://www.home-assistant.io/docs/configuration/templating/):

- variables ``value``, ``value_json``;
- filters and functions ``float(default)``, ``int(default, base)``, ``bool(default)``,
  ``round(precision, method, default)`` (methods common, ceil, floor, half), ``multiply``,
  ``add``, ``log``, ``sqrt``, ``iif(if_true, if_false, if_none)``, ``is_defined``,
  ``is_number``, ``min``/``max``, ``to_json``/``from_json``, ``regex_replace``,
  ``regex_search``, ``regex_match``, ``bitwise_and``/``bitwise_or``, ``ord``,
  ``base64_decode``; the jinja2 builtin filters in `_JINJA_FILTERS` (``default``/``d``, ``abs``,
  ``lower``, ``replace``, ``trim``, ``first``, ``join``, ``map``, ``selectattr``...; not the
  width-taking or text-making ones: ``center``, ``indent``, ``wordwrap``, ``format``,
  ``truncate``, ``batch``, ``slice``, ``urlize``, ``striptags``, ``pprint``, ``random``...); every
  jinja2 builtin test; tests ``is_number``, ``match``, ``search``.

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
MAX_STRING = 65_536  # the result of replace / join
MAX_EXPONENT = 1_000
MAX_INT = 2**63  # an integer result of arithmetic (a nanosecond timestamp fits)
MAX_PRECISION = 15
MAX_REGEX_PATTERN = 256
MAX_REGEX_INPUT = 256
MAX_REGEX_REPEATS = 2

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
    if not isinstance(precision, int) or abs(precision) > MAX_PRECISION:
        # 10**precision below: an unbounded precision is a CPU bomb
        raise TemplateProblem(f"round precision {precision!r} is not an integer within ±15")
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


def _regex_shape(items: Any, depth: int, repeats: list[int]) -> None:
    """Refuse what makes ``re`` backtrack without bound (see the module docstring)."""
    from re import _constants as c  # type: ignore[attr-defined]

    for op, arg in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, high, body = arg
            if high > 1 and high != low:  # "?" cannot backtrack far, "{3}" not at all
                repeats.append(1)
                if depth > 0:
                    raise TemplateProblem("regex has a repeat inside a repeat")
            _regex_shape(body, depth + (1 if high > 1 else 0), repeats)
        elif op is c.BRANCH:
            if depth > 0:
                raise TemplateProblem("regex has an alternation inside a repeat")
            for branch in arg[1]:
                _regex_shape(branch, depth, repeats)
        elif op is c.SUBPATTERN:
            _regex_shape(arg[-1], depth, repeats)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            _regex_shape(arg[1], depth, repeats)
        elif op is c.ATOMIC_GROUP:
            _regex_shape(arg, depth, repeats)
        elif op in (c.GROUPREF, c.GROUPREF_EXISTS):
            raise TemplateProblem("regex uses a backreference")


def _regex(pattern: Any, ignorecase: bool) -> re.Pattern[str]:
    pattern = str(pattern)
    if len(pattern) > MAX_REGEX_PATTERN:
        raise TemplateProblem(f"regex longer than {MAX_REGEX_PATTERN} characters")
    from re import _parser  # type: ignore[attr-defined]

    try:
        parsed = _parser.parse(pattern, re.IGNORECASE if ignorecase else 0)
    except re.error as exc:
        raise TemplateProblem(f"regex {pattern!r}: {exc}") from None
    repeats: list[int] = []
    _regex_shape(parsed, 0, repeats)
    if len(repeats) > MAX_REGEX_REPEATS:
        raise TemplateProblem(f"regex has more than {MAX_REGEX_REPEATS} variable-length repeats")
    return re.compile(pattern, re.IGNORECASE if ignorecase else 0)


def _regex_input(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_REGEX_INPUT:
        raise TemplateProblem(f"regex input of {len(text)} characters > {MAX_REGEX_INPUT}")
    return text


def regex_replace(value: Any, find: str = "", replace: str = "", ignorecase: bool = False) -> str:
    if len(str(replace)) > MAX_REGEX_PATTERN:
        raise TemplateProblem(f"regex replacement longer than {MAX_REGEX_PATTERN} characters")
    return _regex(find, ignorecase).sub(str(replace), _regex_input(value))


def regex_match(value: Any, find: str = "", ignorecase: bool = False) -> bool:
    return bool(_regex(find, ignorecase).match(_regex_input(value)))


def regex_search(value: Any, find: str = "", ignorecase: bool = False) -> bool:
    return bool(_regex(find, ignorecase).search(_regex_input(value)))


def bounded_replace(value: Any, old: Any, new: Any, count: Any = None) -> str:
    """jinja's ``replace``, refused when its result would exceed `MAX_STRING` (it multiplies)."""
    text, old, new = str(value), str(old), str(new)
    times = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    if len(text) + times * max(len(new) - len(old), 0) > MAX_STRING:
        raise TemplateProblem("replace result too large")
    return text.replace(old, new, -1 if count is None else int(count))


def bounded_join(value: Any, d: Any = "", attribute: Any = None) -> str:
    """jinja's ``join``, refused when its result would exceed `MAX_STRING`."""
    if attribute is not None:
        value = [v.get(attribute) if isinstance(v, dict) else None for v in value]
    parts = [str(v) for v in value]
    if sum(map(len, parts)) + len(str(d)) * max(len(parts) - 1, 0) > MAX_STRING:
        raise TemplateProblem("join result too large")
    return str(d).join(parts)


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
# jinja2's builtin filters that cannot make a large string from a small template (the others:
# center, indent, wordwrap, format, truncate, batch, slice, urlize, striptags, pprint, random,
# xmlattr, wordcount, groupby, filesizeformat are not provided).
_JINJA_FILTERS = frozenset(
    {
        "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape",
        "first", "forceescape", "items", "last", "length", "list", "lower", "map", "reject",
        "rejectattr", "reverse", "safe", "select", "selectattr", "sort", "string", "sum",
        "title", "tojson", "trim", "unique", "upper", "urlencode",
    }
)  # fmt: skip
_TESTS: dict[str, Callable[..., Any]] = {
    "is_number": is_number,
    "match": regex_match,
    "search": regex_search,
}


def _check_int(result: Any) -> Any:
    if isinstance(result, int) and not isinstance(result, bool) and abs(result) > MAX_INT:
        raise TemplateProblem("integer result beyond ±2**63")
    return result


class _BoundedSandbox(SandboxedEnvironment):
    """The sandbox, with repetition, powers, integers and ``%`` bounded (a template must not
    eat the memory or the CPU of the thread that renders it)."""

    intercepted_binops = frozenset({"*", "**", "%", "+", "-", "//", "/"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            return _check_int(_power(left, right))
        if operator == "%":
            if isinstance(left, str | bytes):
                raise TemplateProblem("% string formatting is not supported")
            return _check_int(left % right)
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and times * max(len(seq), 1) > MAX_REPEAT:
                    raise TemplateProblem("repetition too large")
        return _check_int(super().call_binop(context, operator, left, right))


def _power(left: Any, right: Any) -> Any:
    """``left ** right`` when its result is small, both operands bounded before it is computed."""
    for operand in (left, right):
        if isinstance(operand, int) and abs(operand) > MAX_INT:
            raise TemplateProblem("operand of ** beyond ±2**63")
    if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
        raise TemplateProblem(f"exponent {right!r} is too large")
    ints = isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
    if ints and (abs(left).bit_length() - 1) * right > MAX_INT.bit_length():
        raise TemplateProblem("power result beyond ±2**63")
    return left**right


def _environment() -> SandboxedEnvironment:
    env = _BoundedSandbox(autoescape=False, undefined=jinja2.Undefined)
    env.filters = {name: env.filters[name] for name in _JINJA_FILTERS}
    env.filters.update(_FILTERS)
    env.filters["replace"] = bounded_replace
    env.filters["join"] = bounded_join
    env.tests.update(_TESTS)
    env.globals.clear()  # range, namespace, lipsum, cycler, joiner, dict: none is needed
    env.globals.update(_FUNCTIONS)
    return env


# The syntax-tree nodes a value template may use: no loop, assignment, macro or block, so a
# render's work is bounded by the template's length.
_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.If, nodes.CondExpr, nodes.Const,
    nodes.Name, nodes.Getattr, nodes.Getitem, nodes.Slice, nodes.Filter, nodes.Test,
    nodes.Call, nodes.Keyword, nodes.List, nodes.Tuple, nodes.Dict, nodes.Pair, nodes.Concat,
    nodes.And, nodes.Or, nodes.Not, nodes.Neg, nodes.Pos, nodes.Compare, nodes.Operand,
    nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Pow,
)  # fmt: skip
# Methods a template may call on a value (``value.split(',')[0]``): none makes a larger string.
_SAFE_METHODS = frozenset(
    {
        "split", "rsplit", "splitlines", "strip", "lstrip", "rstrip", "lower", "upper",
        "title", "capitalize", "startswith", "endswith", "isdigit", "isnumeric", "isalpha",
        "count", "find", "rfind", "get", "keys", "values", "items",
    }
)  # fmt: skip


def _check_tree(tree: nodes.Template) -> None:
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, _ALLOWED_NODES):
            raise TemplateProblem(f"uses {type(node).__name__}, which value templates may not")
        if isinstance(node, nodes.Name) and (node.ctx != "load" or node.name not in _KNOWN_NAMES):
            raise TemplateProblem(f"uses {node.name}, which homeedge does not provide")
        left = node.left if isinstance(node, nodes.Mod) else None
        if isinstance(left, nodes.Concat) or (
            isinstance(left, nodes.Const) and isinstance(left.value, str)
        ):
            raise TemplateProblem("% string formatting is not supported")
        if isinstance(node, nodes.Call):
            callee = node.node
            if isinstance(callee, nodes.Name):
                continue  # checked as a Name: one of the helpers
            if isinstance(callee, nodes.Getattr) and callee.attr in _SAFE_METHODS:
                continue
            raise TemplateProblem("calls something other than a helper or a read-only method")


_ENV = _environment()
_KNOWN_NAMES = VARIABLES | frozenset(_FUNCTIONS)


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
    _check_tree(tree)
    try:
        return ValueTemplate(source, _ENV.from_string(tree))
    except jinja2.TemplateError as exc:
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None
