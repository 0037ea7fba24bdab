"""Specification of SMS encoding and segment counting (dispatch_notifier.segments)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from dispatch_notifier.segments import (
    GSM_BASIC_CHARS,
    GSM_CHARS,
    GSM_EXTENSION_CHARS,
    GSM_SAFE_REPLACEMENTS,
    SegmentInfo,
    count,
    gsm_safe,
    is_gsm,
    non_gsm_chars,
)

EMOJI = "\U0001f600"  # 😀, outside the BMP: a UTF-16 surrogate pair

gsm_alphabet = st.sampled_from(sorted(GSM_CHARS))
gsm_texts = st.text(alphabet=gsm_alphabet, max_size=400)
fixable_texts = st.text(alphabet=st.sampled_from(sorted(GSM_CHARS | GSM_SAFE_REPLACEMENTS.keys())))
any_texts = st.text(max_size=400)


# --- the alphabet -----------------------------------------------------------------------------


def test_basic_table_has_127_characters_including_lf_and_cr():
    assert len(GSM_BASIC_CHARS) == 127
    assert "\n" in GSM_BASIC_CHARS
    assert "\r" in GSM_BASIC_CHARS


def test_currency_sign_and_section_sign_are_gsm():
    assert is_gsm("¤§")


def test_common_look_alikes_are_not_gsm():
    for ch in "`‘’“”–—…ç":
        assert not is_gsm(ch), repr(ch)


def test_extension_table_is_exactly_the_ten_escape_characters():
    assert set("^{}\\[~]|€\f") == GSM_EXTENSION_CHARS


# --- empty text -------------------------------------------------------------------------------


def test_empty_text_is_zero_segments_of_gsm7():
    info = count("")
    assert info == SegmentInfo(
        encoding="GSM-7",
        characters=0,
        segments=0,
        per_segment=160,
        remaining=160,
        unicode_chars=(),
    )


# --- GSM-7 limits -----------------------------------------------------------------------------


def test_exactly_160_gsm_characters_fit_one_segment():
    info = count("a" * 160)
    assert (info.encoding, info.characters, info.segments) == ("GSM-7", 160, 1)
    assert info.per_segment == 160
    assert info.remaining == 0


def test_161_gsm_characters_need_two_segments_of_153():
    info = count("a" * 161)
    assert info.segments == 2
    assert info.per_segment == 153
    assert info.remaining == 153 * 2 - 161


def test_306_gsm_characters_fill_two_segments_exactly():
    info = count("a" * 306)
    assert info.segments == 2
    assert info.remaining == 0


def test_307_gsm_characters_need_three_segments():
    info = count("a" * 307)
    assert info.segments == 3
    assert info.remaining == 152


def test_euro_sign_costs_two_septets():
    info = count("€")
    assert info.encoding == "GSM-7"
    assert info.characters == 2
    assert info.remaining == 158


def test_every_extension_character_costs_two_septets():
    for ch in GSM_EXTENSION_CHARS:
        assert count(ch).characters == 2, repr(ch)


def test_80_euro_signs_fit_one_segment_but_81_do_not():
    assert count("€" * 80).segments == 1
    assert count("€" * 81).segments == 2


def test_extension_character_at_position_153_moves_wholly_to_the_next_part():
    # 152 septets, then an ESC pair that would occupy septets 153-154, then 152 more.
    # 306 septets would fit 2 parts by plain division, but the pair may not straddle
    # the boundary: part 1 = 152, part 2 = 2 + 151 = 153, part 3 = 1.
    text = "a" * 152 + "€" + "a" * 152
    info = count(text)
    assert info.characters == 306
    assert info.segments == 3
    assert info.remaining == 152


def test_extension_character_ending_exactly_on_a_boundary_stays_in_its_part():
    text = "a" * 151 + "€" + "a" * 153  # 153 + 153 septets
    info = count(text)
    assert info.characters == 306
    assert info.segments == 2
    assert info.remaining == 0


# --- UCS-2 limits -----------------------------------------------------------------------------


def test_one_curly_quote_switches_the_whole_message_to_ucs2():
    info = count("Your order is on it’s way")
    assert info.encoding == "UCS-2"
    assert info.per_segment == 70
    assert info.unicode_chars == ("’",)


def test_70_ucs2_characters_fit_one_segment():
    info = count("ç" * 70)
    assert (info.encoding, info.characters, info.segments, info.remaining) == ("UCS-2", 70, 1, 0)


def test_71_ucs2_characters_need_two_segments_of_67():
    info = count("ç" * 71)
    assert info.segments == 2
    assert info.per_segment == 67
    assert info.remaining == 67 * 2 - 71


def test_134_ucs2_characters_fill_two_segments_exactly():
    info = count("ç" * 134)
    assert info.segments == 2
    assert info.remaining == 0


def test_135_ucs2_characters_need_three_segments():
    info = count("ç" * 135)
    assert info.segments == 3
    assert info.remaining == 66


def test_gsm_characters_in_a_ucs2_message_cost_one_unit_each():
    info = count("€ç")
    assert info.encoding == "UCS-2"
    assert info.characters == 2


def test_emoji_counts_two_utf16_units():
    info = count(EMOJI)
    assert info.encoding == "UCS-2"
    assert info.characters == 2
    assert info.remaining == 68


def test_surrogate_pair_is_not_split_across_parts():
    # 66 units, then a surrogate pair that would occupy units 67-68, then 66 more.
    # 134 units would fit 2 parts by plain division; the pair moves wholly to part 2:
    # part 1 = 66, part 2 = 2 + 65 = 67, part 3 = 1.
    text = "ç" * 66 + EMOJI + "ç" * 66
    info = count(text)
    assert info.characters == 134
    assert info.segments == 3
    assert info.remaining == 66


def test_unicode_chars_lists_each_offender_once_in_order_of_appearance():
    info = count("ç “hi” ç — “ok” " + EMOJI + "ç")
    assert info.unicode_chars == ("ç", "“", "”", "—", EMOJI)
    assert non_gsm_chars("ç “hi” ç") == ("ç", "“", "”")


def test_gsm_text_has_no_unicode_chars():
    assert count("Hello {name}, €5 off!").unicode_chars == ()
    assert non_gsm_chars("Hello") == ()


def test_to_dict_is_json_serialisable():
    info = count("Order “42” is on its way")
    data = info.to_dict()
    assert data == {
        "encoding": "UCS-2",
        "characters": 24,
        "segments": 1,
        "per_segment": 70,
        "remaining": 46,
        "unicode_chars": ["“", "”"],
    }
    assert json.loads(json.dumps(data)) == data


# --- gsm_safe ---------------------------------------------------------------------------------


def test_gsm_safe_turns_smart_punctuation_into_plain_gsm():
    result = gsm_safe("“Hello” – ‘world’…")
    assert result == "\"Hello\" - 'world'..."
    assert count(result).encoding == "GSM-7"


def test_gsm_safe_normalises_spaces_and_drops_zero_width_characters():
    assert gsm_safe("a\u00a0b\u202fc\u2009d") == "a b c d"
    assert gsm_safe("zero\u200bwidth\ufeff") == "zerowidth"


def test_gsm_safe_maps_bullets_dashes_and_primes():
    assert gsm_safe("\u2022 5\u2032 \u2212 6\u2033 \u2014 x\u2011y") == "- 5' - 6\" - x-y"


def test_gsm_safe_maps_listed_latin_letters_and_lowercase_c_cedilla_to_c():
    assert gsm_safe("áíóúâêîôûëïç") == "aiouaeiouei" + "c"


def test_gsm_safe_leaves_unmapped_characters_alone():
    assert gsm_safe("Привет " + EMOJI + " Ç é €") == "Привет " + EMOJI + " Ç é €"


def test_gsm_safe_replacements_never_produce_a_character_that_needs_replacing():
    for source, target in GSM_SAFE_REPLACEMENTS.items():
        assert not is_gsm(source), repr(source)
        assert is_gsm(target), repr(source)


# --- properties -------------------------------------------------------------------------------


@given(any_texts)
def test_segments_is_zero_exactly_when_text_is_empty(text):
    assert (count(text).segments == 0) == (text == "")


@given(any_texts, st.characters())
def test_appending_a_character_never_reduces_the_segment_count(text, ch):
    assert count(text + ch).segments >= count(text).segments


@given(st.text(alphabet=gsm_alphabet, max_size=400), st.text(max_size=3))
def test_appending_text_to_a_gsm_message_never_reduces_the_segment_count(text, suffix):
    before = count(text).segments
    for i in range(1, len(suffix) + 1):
        after = count(text + suffix[:i]).segments
        assert after >= before
        before = after


@given(gsm_texts)
def test_gsm_only_text_costs_the_sum_of_per_character_septets(text):
    info = count(text)
    assert info.encoding == "GSM-7"
    assert info.unicode_chars == ()
    assert info.characters == sum(2 if ch in GSM_EXTENSION_CHARS else 1 for ch in text)
    if 0 < info.characters <= 160:
        assert info.segments == 1
        assert info.remaining == 160 - info.characters


@given(any_texts)
def test_segment_fields_are_consistent(text):
    info = count(text)
    assert 0 <= info.remaining <= info.per_segment
    if info.segments > 1:
        # Each part holds at most per_segment units and at least per_segment - 1
        # (only a 2-unit character can be pushed out of a part).
        assert info.characters <= info.segments * info.per_segment - info.remaining
        assert info.characters >= (info.segments - 1) * (info.per_segment - 1)


@given(any_texts)
def test_gsm_safe_is_idempotent(text):
    once = gsm_safe(text)
    assert gsm_safe(once) == once


@given(fixable_texts)
def test_gsm_safe_output_is_gsm7_when_every_character_is_gsm_or_replaceable(text):
    assert is_gsm(gsm_safe(text))
    assert count(gsm_safe(text)).encoding == "GSM-7"


@given(any_texts)
def test_encoding_is_ucs2_exactly_when_there_are_non_gsm_characters(text):
    info = count(text)
    assert (info.encoding == "UCS-2") == bool(non_gsm_chars(text))
    assert info.unicode_chars == non_gsm_chars(text)
    assert is_gsm(text) == (info.encoding == "GSM-7")
