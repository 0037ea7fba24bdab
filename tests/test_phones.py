"""Phone numbers: the customer's mobile in E.164, or a reason; masked wherever shown."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch_notifier.phones import calling_code, choose, digits, mask, normalise


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("07911 123456", "GB", "+447911123456"),
        ("+44 7911 123456", "US", "+447911123456"),
        ("0044 7911 123456", "GB", "+447911123456"),
        ("01512 3456789", "DE", "+4915123456789"),
        ("(201) 555-0123", "US", "+12015550123"),
    ],
)
def test_numbers_are_normalised_to_e164_in_the_shipping_region(raw, region, expected):
    assert normalise(raw, region) == (expected, None)


def test_a_landline_is_not_texted():
    assert normalise("020 7946 0018", "GB") == (None, "not a mobile number")


@pytest.mark.parametrize("raw", ["555-555-SHIP", "12", "+447700900123", "not a number"])
def test_unusable_numbers_give_a_reason(raw):
    e164, reason = normalise(raw, "US")
    assert e164 is None and reason


def test_the_first_usable_candidate_wins():
    assert choose(["555-555-SHIP", "07911 123456", "07911 000000"], "GB").e164 == "+447911123456"


def test_no_candidates_means_no_phone_number():
    assert choose(["", None, "  "], "GB").reason == "no phone number"  # type: ignore[list-item]


def test_masking_keeps_country_code_and_last_four_digits():
    assert mask("+447911123456") == "+44 •••• ••3456"
    assert mask(None) == ""


def _example_numbers() -> list[phonenumbers.PhoneNumber]:
    mobiles = (
        phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        for region in sorted(phonenumbers.SUPPORTED_REGIONS)
    )
    global_services = (
        phonenumbers.example_number_for_non_geo_entity(code)
        for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)
    )
    return [number for number in (*mobiles, *global_services) if number is not None]


def test_every_regions_numbers_are_masked_with_their_own_calling_code():
    numbers = _example_numbers()
    assert len(numbers) > 200
    for number in numbers:
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        assert mask(e164) == f"+{number.country_code} •••• ••{e164[-4:]}", e164


@given(st.from_regex(r"\+[0-9]{1,17}", fullmatch=True))
def test_the_calling_code_is_the_one_libphonenumber_reads(e164):
    try:
        expected = str(phonenumbers.parse(e164).country_code)
    except phonenumbers.NumberParseException:
        return  # not a number libphonenumber reads; the next test covers what we show for it
    assert calling_code(e164) == expected


@given(st.text(max_size=20))
def test_masking_any_text_shows_at_most_a_calling_code_and_four_characters(raw):
    shown = mask(raw)
    if not raw:
        assert shown == ""
        return
    code = calling_code(raw)
    if code:
        assert raw.startswith(f"+{code}") and shown == f"+{code} •••• ••{raw[-4:]}"
    else:
        assert shown == f"•••• ••{raw[-4:]}"


def test_dotdigital_gets_digits_only():
    assert digits("+447911123456") == "447911123456"


@given(st.lists(st.text(max_size=30), max_size=4), st.sampled_from(["GB", "US", "DE", None]))
def test_choosing_never_raises_and_returns_e164_or_a_reason(candidates, region):
    choice = choose(candidates, region)
    if choice.e164 is None:
        assert choice.reason
    else:
        assert choice.e164.startswith("+") and choice.e164[1:].isdigit()
        assert "•" in mask(choice.e164) and choice.e164 not in mask(choice.e164)
