"""Rendering staff-edited templates: sandboxed, strict, capped, and never a crash."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_notifier.rendering import RenderError, render, unknown_variables
from dispatch_notifier.samples import sample_context

CONTEXT = sample_context()
DEFAULT = Path(__file__).resolve().parent.parent / "templates" / "dispatched.txt.j2"


def test_the_default_message_names_shop_order_carrier_and_tracking_link():
    source = DEFAULT.read_text()
    text = render(source, CONTEXT)
    assert text == (
        "Example Shop: your order 1001 is on its way with Royal Mail. "
        "Track it: https://track.example.com/RM123456785GB"
    )


def test_without_a_tracking_link_the_number_is_shown():
    source = DEFAULT.read_text()
    text = render(source, {**CONTEXT, "tracking_url": "", "shop_name": ""})
    assert text.startswith("Your order 1001")
    assert "Tracking number: RM123456785GB" in text


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("Hi {{ nobody }}", "'nobody' is undefined"),
        ("{{ ''.__class__ }}", "unsafe"),
        ("{{ 'x' * 100000 }}", "repeats text"),
        ("{{ 9 ** 999 }}", "too large"),
        ("{% for %}", "template error"),
        ("{{ items.append(1) }}", "unsafe"),
        ("   ", "empty message"),
        ("x" * 2001, "longer than 2000"),
        ("{% for i in range(2000) %}xx{% endfor %}", "longer than 1600"),
        ("{{ cycler }}", "undefined"),
    ],
)
def test_unsafe_or_broken_templates_raise_a_render_error(source, message):
    with pytest.raises(RenderError, match=message):
        render(source, CONTEXT)


def test_output_is_plain_text_not_html_escaped():
    assert render("{{ shop_name }}", {"shop_name": "Tom & Jerry <Ltd>"}) == "Tom & Jerry <Ltd>"


def test_default_filter_still_works_under_strict_undefined():
    assert render("Hi {{ first_name | default('there') }}", {}) == "Hi there"


def test_unknown_variables_are_listed():
    assert unknown_variables("{{ order_number }} {{ pin }} {{ secret }}") == ["pin", "secret"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_template_text_renders_or_raises_render_error(source):
    with contextlib.suppress(RenderError):
        render(source, CONTEXT)
