"""What the template editor shows and enforces: preview, SMS cost, GSM-safe fix, save checks.

The admin page and the JSON API both call these functions, so page and server never disagree.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from dispatch_notifier import rendering, segments
from dispatch_notifier.events import TEMPLATE_VARIABLES
from dispatch_notifier.samples import sample_context, sample_for

# The context a template sees when every variable is empty: its fixed text, i.e. its minimum.
_EMPTY_CONTEXT: dict[str, Any] = {
    name: ([] if name == "items" else 0 if name == "item_count" else "")
    for name in TEMPLATE_VARIABLES
}


def counter(text: str) -> dict[str, Any]:
    """The SMS cost of `text` with what the editor needs to explain it."""
    info = segments.count(text)
    offenders = set(info.unicode_chars)
    return {
        **info.to_dict(),
        "unicode_details": [
            {
                "char": ch,
                "codepoint": f"U+{ord(ch):04X}",
                "name": unicodedata.name(ch, "unnamed character").lower(),
                "replacement": segments.GSM_SAFE_REPLACEMENTS.get(ch),
            }
            for ch in info.unicode_chars
        ],
        # The text split into runs, flagged where a character forces UCS-2 (for highlighting).
        "runs": _runs(text, offenders),
    }


def _runs(text: str, offenders: set[str]) -> list[list[Any]]:
    runs: list[list[Any]] = []
    for ch in text:
        bad = ch in offenders
        if runs and runs[-1][1] == bad:
            runs[-1][0] += ch
        else:
            runs.append([ch, bad])
    return runs


@dataclass
class Preview:
    """A template rendered with one platform's sample data, and what it would cost."""

    text: str | None = None
    error: str | None = None
    unknown_variables: list[str] = field(default_factory=list)
    variables_used: list[str] = field(default_factory=list)
    count: dict[str, Any] | None = None
    minimum: dict[str, int] | None = None
    gsm_safe_body: str | None = None  # the body with look-alikes replaced, if that changes it
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "error": self.error,
            "unknown_variables": self.unknown_variables,
            "variables_used": self.variables_used,
            "count": self.count,
            "minimum": self.minimum,
            "gsm_safe_body": self.gsm_safe_body,
            "problems": self.problems,
            "ok": not self.problems,
        }


def preview(body: str, platform: str, locale: str, max_segments: int) -> Preview:
    """Render `body` with `platform`'s sample dispatch, in the same sandbox as real sends."""
    result = Preview()
    fixed = segments.gsm_safe(body)
    result.gsm_safe_body = fixed if fixed != body else None
    try:
        used = rendering.compile_check(body)
    except rendering.RenderError as exc:
        result.error = str(exc)
        result.problems.append(str(exc))
        return result
    result.variables_used = sorted(used & set(TEMPLATE_VARIABLES))
    result.unknown_variables = rendering.unknown_variables(body)
    if result.unknown_variables:
        names = ", ".join(result.unknown_variables)
        result.problems.append(f"unknown variables: {names} (see the list of variables)")
        return result
    context = sample_context(locale, sample_for(platform))
    try:
        result.text = rendering.render(body, context)
    except rendering.RenderError as exc:
        result.error = str(exc)
        result.problems.append(str(exc))
        return result
    result.count = counter(result.text)
    if result.count["segments"] > max_segments:
        result.problems.append(
            f"the message needs {result.count['segments']} SMS; the maximum is {max_segments}"
        )
    if result.variables_used:
        try:
            fixed_text = _render_fixed_text(body)
        except rendering.RenderError:
            fixed_text = None
        if fixed_text is not None:
            info = segments.count(fixed_text)
            result.minimum = {"characters": info.characters, "segments": info.segments}
    return result


def _render_fixed_text(body: str) -> str:
    """The template with every variable empty: the part of the length that never varies."""
    return rendering.render(body, dict(_EMPTY_CONTEXT))


def save_problems(body: str, platforms: list[str], locale: str, max_segments: int) -> list[str]:
    """Why `body` may not be saved (empty when it may): compile, variables, size per platform."""
    if not body.strip():
        return ["the template is empty"]
    problems: list[str] = []
    for platform in platforms or ["shopify"]:
        found = preview(body, platform, locale, max_segments).problems
        for problem in found:
            if "SMS; the maximum" in problem and len(platforms) > 1:
                problem = f"with {platform} sample data, {problem}"
            if problem not in problems:
                problems.append(problem)
    return problems
