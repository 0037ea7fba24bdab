"""SMS encoding and segment rules: GSM-7 vs UCS-2, character cost and part count.
The single source of truth for the JSON API and the admin page's live counter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 basic character set, in code-table order (0x1B, the ESC code, is omitted).
GSM_BASIC_ALPHABET: str = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# GSM 03.38 extension table: each is sent as ESC + code, so costs 2 septets.
GSM_EXTENSION_ALPHABET: str = "\f^{}\\[~]|€"

GSM_BASIC_CHARS: frozenset[str] = frozenset(GSM_BASIC_ALPHABET)
GSM_EXTENSION_CHARS: frozenset[str] = frozenset(GSM_EXTENSION_ALPHABET)
GSM_CHARS: frozenset[str] = GSM_BASIC_CHARS | GSM_EXTENSION_CHARS

GSM7_SINGLE_SEGMENT = 160  # septets in a message sent as one part
GSM7_MULTI_SEGMENT = 153  # septets per part once concatenated (7 go to the UDH)
UCS2_SINGLE_SEGMENT = 70  # UTF-16 code units in a message sent as one part
UCS2_MULTI_SEGMENT = 67  # UTF-16 code units per part once concatenated


def _build_gsm_safe_replacements() -> dict[str, str]:
    table: dict[str, str] = {}
    # Curly / low-9 single quotes and primes.
    for ch in "\u2018\u2019\u201a\u201b\u2032":
        table[ch] = "'"
    # Curly / low-9 double quotes and double primes.
    for ch in "\u201c\u201d\u201e\u201f\u2033":
        table[ch] = '"'
    # Hyphen, non-breaking hyphen, figure dash, en dash, em dash, minus sign.
    for ch in "\u2010\u2011\u2012\u2013\u2014\u2212":
        table[ch] = "-"
    table["\u2026"] = "..."  # horizontal ellipsis
    table["\u2022"] = "-"  # bullet
    # No-break and other Unicode spaces (every Zs character except U+0020).
    for ch in "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a":
        table[ch] = " "
    for ch in "\u202f\u205f\u3000":
        table[ch] = " "
    # Zero-width characters are dropped.
    for ch in "\u200b\u200c\u200d\u2060\ufeff":
        table[ch] = ""
    # Latin letters GSM lacks, mapped the way SMS "smart encoding" does.
    table.update(
        {
            "á": "a",
            "í": "i",
            "ó": "o",
            "ú": "u",
            "â": "a",
            "ê": "e",
            "î": "i",
            "ô": "o",
            "û": "u",
            "ë": "e",
            "ï": "i",
            "ç": "c",
        }
    )
    return table


# What gsm_safe() replaces, and with what ("" means the character is removed).
GSM_SAFE_REPLACEMENTS: dict[str, str] = _build_gsm_safe_replacements()
_GSM_SAFE_TABLE = str.maketrans(GSM_SAFE_REPLACEMENTS)


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """How a text will be sent as SMS."""

    encoding: Encoding
    characters: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int  # 0 for an empty text
    per_segment: int  # 160/153 (GSM-7) or 70/67 (UCS-2)
    remaining: int  # units still free in the last segment
    unicode_chars: tuple[str, ...]  # distinct chars forcing UCS-2, first-appearance order

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoding": self.encoding,
            "characters": self.characters,
            "segments": self.segments,
            "per_segment": self.per_segment,
            "remaining": self.remaining,
            "unicode_chars": list(self.unicode_chars),
        }


def is_gsm(text: str) -> bool:
    """True if every character is in the GSM 03.38 basic or extension table."""
    return all(ch in GSM_CHARS for ch in text)


def non_gsm_chars(text: str) -> tuple[str, ...]:
    """Distinct characters outside GSM 03.38, in order of first appearance."""
    return tuple(dict.fromkeys(ch for ch in text if ch not in GSM_CHARS))


def gsm_safe(text: str) -> str:
    """Replace look-alike characters with GSM equivalents; unmapped ones are kept."""
    return text.translate(_GSM_SAFE_TABLE)


def _septets(ch: str) -> int:
    return 2 if ch in GSM_EXTENSION_CHARS else 1


def _utf16_units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def _pack(costs: list[int], capacity: int) -> tuple[int, int]:
    """Greedily pack indivisible costs into parts; return (parts, units used in the last)."""
    parts, used = 1, 0
    for cost in costs:
        if used + cost > capacity:
            parts += 1
            used = 0
        used += cost
    return parts, used


def count(text: str) -> SegmentInfo:
    """Work out encoding, length and number of SMS parts for ``text``."""
    offenders = non_gsm_chars(text)
    if offenders:
        encoding: Encoding = "UCS-2"
        costs = [_utf16_units(ch) for ch in text]
        single, multi = UCS2_SINGLE_SEGMENT, UCS2_MULTI_SEGMENT
    else:
        encoding = "GSM-7"
        costs = [_septets(ch) for ch in text]
        single, multi = GSM7_SINGLE_SEGMENT, GSM7_MULTI_SEGMENT

    characters = sum(costs)
    if characters == 0:
        segments, per_segment, remaining = 0, single, single
    elif characters <= single:
        segments, per_segment, remaining = 1, single, single - characters
    else:
        segments, last_used = _pack(costs, multi)
        per_segment, remaining = multi, multi - last_used

    return SegmentInfo(
        encoding=encoding,
        characters=characters,
        segments=segments,
        per_segment=per_segment,
        remaining=remaining,
        unicode_chars=offenders,
    )
