"""Redaction of personal data before anything is logged: e-mail addresses, phone numbers, card
numbers (checked with Luhn's algorithm, so ordinary long numbers stay) and any field the user marks.

    >>> Redactor(fields=["name"]).redact({"name": "Ada", "note": "mail ada@example.com or +44 20 7946 0958",
    ...                                   "card": "4111 1111 1111 1111"})
    {'name': '[REDACTED]', 'note': 'mail [EMAIL] or [PHONE]', 'card': '[CARD]'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

#: Fields redacted whatever the user marks: credentials are never logged.
DEFAULT_FIELDS = frozenset({
    "password", "passwd", "secret", "token", "access_token", "refresh_token", "api_key", "apikey",
    "authorization", "cookie", "set-cookie", "x-api-key", "ssn", "card_number", "credit_card", "cvv",
})
MASK = "[REDACTED]"
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13 to 19 digits, optionally grouped by single spaces or dashes: what card numbers look like.
_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
# An international number (+ and 7-15 digits, grouped), or a national one with an area code.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4})(?![\w])"
)
_SEVEN_DIGITS = re.compile(r"(?:\D*\d){7}")
_BEARER = re.compile(r"kaon_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def luhn_valid(digits: str) -> bool:
    """True when `digits` (only digits) passes the Luhn checksum that card numbers carry."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[CARD]" if luhn_valid(digits) else match.group(0)


class Redactor:
    """Redacts strings, and the values of marked fields, anywhere in a JSON-like value.

    Strings longer than `max_string_chars` and lists longer than `max_list_items` are cut (a log
    is for reading, not for replaying 10 MB bodies).
    """

    def __init__(self, fields: Iterable[str] = (), *, max_string_chars: int = 1000, max_list_items: int = 256,
                 max_depth: int = 32) -> None:
        self.fields = DEFAULT_FIELDS | {f.strip().lower() for f in fields if f.strip()}
        self.max_string_chars = max_string_chars
        self.max_list_items = max_list_items
        self.max_depth = max_depth

    def redact_text(self, text: str) -> str:
        if len(text) > self.max_string_chars:
            # Redact a little past the cut, so that a number split by it is still caught whole.
            head = self.redact_text_full(text[: self.max_string_chars + 32])[: self.max_string_chars]
            return f"{head}...[{len(text)} chars]"
        return self.redact_text_full(text)

    @staticmethod
    def redact_text_full(text: str) -> str:
        if "kaon_" in text:
            text = _BEARER.sub(MASK, text)
        if "@" in text:
            text = _EMAIL.sub("[EMAIL]", text)
        if len(text) <= 4096 and _SEVEN_DIGITS.match(text) is None:
            return text  # too few digits for a card or a phone number: the common case, fast
        text = _CARD.sub(_card, text)
        return _PHONE.sub("[PHONE]", text)

    def redact(self, value: Any, _depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return value
        if isinstance(value, int):
            # A card number sent as a JSON number.
            return "[CARD]" if 10**12 <= abs(value) < 10**19 and luhn_valid(str(abs(value))) else value
        if _depth >= self.max_depth:
            return "[TOO DEEP]"
        if isinstance(value, dict):
            # an error envelope's field entry ({"name": "meta.patient_id", "received": ...}) echoes the value
            named = "received" in value and str(value.get("name", "")).rsplit(".", 1)[-1].lower() in self.fields
            return {key: (MASK if str(key).lower() in self.fields or (named and key == "received")
                          else self.redact(item, _depth + 1))
                    for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            if isinstance(value, list) and value and isinstance(value[0], list) and self._plain_numbers(value, _depth):
                return value  # a tensor of numbers: nothing to redact, and most of a body
            head = value[: self.max_list_items]
            if all(type(item) is float for item in head):  # tensors: nothing to redact, and most of a body
                items = list(head)
            else:
                items = [self.redact(item, _depth + 1) for item in head]
            if len(value) > self.max_list_items:
                items.append(f"...[{len(value) - self.max_list_items} more items]")
            return items
        return self.redact_text(str(value))

    def _plain_numbers(self, value: list[Any], depth: int) -> bool:
        """True when `value` is nested lists of numbers that redact() would return unchanged: no strings, no
        integer as long as a card number, no list to cut, not too deep. One numpy pass instead of a walk."""
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError):  # ragged, or ints beyond int64
            return False
        if array.dtype.kind not in "fiub" or depth + array.ndim > self.max_depth:
            return False
        if array.size == 0 or max(array.shape) > self.max_list_items:
            return False
        return array.dtype.kind == "b" or bool(array.min() > -(10**12) and array.max() < 10**12)
