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
        marked = {f.strip().lower() for f in fields if f.strip()}
        self.fields = DEFAULT_FIELDS | {f for f in marked if "." not in f}
        # "meta.name": the field `name` inside `meta`, at any depth (the error envelope names fields so)
        self.paths = tuple(tuple(f.split(".")) for f in marked if "." in f)
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

    def redact(self, value: Any, _depth: int = 0, *, masked: set[str] | None = None,
               _path: tuple[str, ...] = ()) -> Any:
        """`value` with personal data and marked fields masked; the masked fields' values are added to
        `masked` (for `hide`, to mask them where a response echoes them under another name)."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, (int, float)):  # a card number sent as a JSON number (4111111111111111 or .0)
            if abs(value) < 10**12 or (isinstance(value, float) and not value.is_integer()):
                return value
            return "[CARD]" if abs(value) < 10**19 and luhn_valid(str(abs(int(value)))) else value
        if _depth >= self.max_depth:
            return "[TOO DEEP]"
        if isinstance(value, dict):
            # an error envelope's field entry ({"name": "meta.patient_id", "received": ...}) echoes the value
            named = "received" in value and self._marked(_key_path(str(value.get("name", ""))))
            out = {}
            for key, item in value.items():
                path = (*_path, str(key).lower())
                if self._marked(path) or (named and key == "received"):
                    out[key] = MASK
                    if masked is not None:
                        _collect(item, masked)
                else:
                    out[key] = self.redact(item, _depth + 1, masked=masked, _path=path)
            return out
        if isinstance(value, (list, tuple)):
            if isinstance(value, list) and value and isinstance(value[0], list) and self._plain_numbers(value, _depth):
                return value  # a tensor of numbers: nothing to redact, and most of a body
            head = value[: self.max_list_items]
            if all(type(item) is float for item in head) and (not head or max(map(abs, head)) < 10**12):
                items = list(head)  # tensors: nothing to redact, and most of a body
            else:
                items = [self.redact(item, _depth + 1, masked=masked, _path=_path) for item in head]
            if len(value) > self.max_list_items:
                items.append(f"...[{len(value) - self.max_list_items} more items]")
            return items
        return self.redact_text(str(value))

    def hide(self, value: Any, masked: set[str]) -> Any:
        """`value` (already redacted) with the `masked` values masked wherever they appear: an endpoint that
        echoes a marked field under another name, or inside a sentence, must not put it in the log."""
        if not masked:
            return value
        if isinstance(value, str):
            for secret in masked:
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, (int, float)):
            return MASK if str(value) in masked else value
        if isinstance(value, dict):
            return {key: self.hide(item, masked) for key, item in value.items()}
        if isinstance(value, list):
            return [self.hide(item, masked) for item in value]
        return value

    def _marked(self, path: tuple[str, ...]) -> bool:
        """Whether the value at `path` (keys from the root, lowercased) is a marked field."""
        if not path:
            return False
        return path[-1] in self.fields or any(path[-len(p):] == p for p in self.paths)

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


def _key_path(name: str) -> tuple[str, ...]:
    """An error envelope's field name ("inputs.0.meta.name") as keys: list indexes left out."""
    return tuple(part.lower() for part in name.split(".") if part and not part.isdigit())


# Values shorter than this are not hunted for in responses: "1" or "ok" would mask half a response.
_MIN_ECHO_CHARS = 4


def _collect(value: Any, masked: set[str]) -> None:
    """The values inside a masked field, as the text a response could echo them as."""
    if isinstance(value, dict):
        for item in value.values():
            _collect(item, masked)
    elif isinstance(value, (list, tuple)):
        for item in value[:256]:
            _collect(item, masked)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = value if isinstance(value, str) else str(value)
        if len(text) >= _MIN_ECHO_CHARS:
            masked.add(text)
