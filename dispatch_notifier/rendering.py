"""Render staff-edited Jinja SMS templates safely: immutable sandbox, strict variables, caps.

Templates are untrusted input; nothing here touches the database or the network.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dispatch_notifier.events import TEMPLATE_VARIABLES

MAX_SOURCE_CHARS = 2000
MAX_OUTPUT_CHARS = 1600  # Dotdigital's maxLength for a message
MAX_REPEAT = 500  # the longest string a template may build with `*`
MAX_POWER = 100


class RenderError(Exception):
    """A template that cannot be compiled or rendered; the message says why, for a human."""


class _SmsEnvironment(ImmutableSandboxedEnvironment):
    """Caps `*` and `**` so a small template cannot build a huge string or number."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER:
                raise RenderError(f"exponent {right} is too large")
            return operator.pow(left, right)
        if isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple):
            size = (
                len(left) * right
                if isinstance(right, int)
                else (len(right) * left if isinstance(left, int) else 0)
            )
            if size > MAX_REPEAT:
                raise RenderError("the template repeats text too many times")
        return operator.mul(left, right)


def _make_environment() -> _SmsEnvironment:
    env = _SmsEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    # Only the harmless helpers stay: no cycler/joiner/lipsum/namespace objects.
    env.globals = {"range": env.globals["range"]}
    return env


_ENV = _make_environment()


def compile_check(source: str) -> set[str]:
    """Parse a template and return the variables it uses; raise RenderError if it is unusable."""
    if len(source) > MAX_SOURCE_CHARS:
        raise RenderError(f"the template is longer than {MAX_SOURCE_CHARS} characters")
    try:
        parsed = _ENV.parse(source)
    except TemplateError as exc:
        raise RenderError(_describe(exc)) from exc
    return set(meta.find_undeclared_variables(parsed))


def unknown_variables(source: str) -> list[str]:
    """Variables the template uses that no event provides (sorted)."""
    return sorted(compile_check(source) - set(TEMPLATE_VARIABLES) - set(_ENV.globals))


def render(source: str, context: dict[str, Any]) -> str:
    """Render `source` with `context`; the result is stripped plain text, at most 1600 chars."""
    try:
        text = _compiled(source).render(context)
    except RenderError:
        raise
    except (TemplateError, ArithmeticError, TypeError, ValueError, OverflowError) as exc:
        raise RenderError(_describe(exc)) from exc
    text = text.strip()
    if not text:
        raise RenderError("the template rendered an empty message")
    if len(text) > MAX_OUTPUT_CHARS:
        raise RenderError(f"the message is longer than {MAX_OUTPUT_CHARS} characters")
    return text


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> Template:
    """The compiled template of a source text. Parsing and compiling took a third of a send's CPU
    (bench/throughput.py); a source text always compiles the same way, so each is done once."""
    compile_check(source)
    return _ENV.from_string(source)


def _describe(exc: Exception) -> str:
    line = getattr(exc, "lineno", None)
    where = f" (line {line})" if line else ""
    return f"template error{where}: {exc}"
