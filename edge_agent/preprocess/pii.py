"""PII redaction before any chat text leaves the edge (hard examples, escalations, caches).

Regexes find candidates; checks that a regex cannot express (the Luhn digit of
a card, the digit count of a phone number) decide. The bias is towards
precision on ordinary utterances: "a table for 4 at 7 pm", "rate it 5 out of 6",
"songs from 2016" must come through intact, or the student learns from
mangled text and the cloud cannot label it.

All patterns run against the original text; overlaps are resolved by a fixed
priority (email, ip, card, id, phone, then the configured rules), so a
replacement token is never re-matched by a later pattern.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.config import ChatConfig

__all__ = ["Redacted", "Redactor", "luhn_ok"]

_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)", re.ASCII)
# 13-19 digits, single spaces or dashes allowed between any two of them.
_CARD = re.compile(r"(?<![\d+])\d(?:[ -]?\d){12,18}(?![\d])")
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?![\d])")
_LONG_DIGITS = re.compile(r"(?<!\d)\d{9,}(?!\d)")
# A phone candidate: optional +country code, optional (area), then digit groups joined by
# one separator each. _phone_ok() decides from the digit count and the shape.
_PHONE = re.compile(
    r"(?<![\w+])"
    r"(?P<cc>\+\d{1,3}[ .-]?)?"
    r"(?P<area>\(\d{1,5}\)[ .-]?)?"
    r"\d{1,12}(?:[ .-]\d{1,12}){0,5}"
    r"(?![\w])"
)
_SEP = re.compile(r"[ .-]")
_DIGIT = re.compile(r"\d")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_ok(m: re.Match[str]) -> bool:
    return luhn_ok("".join(_DIGIT.findall(m.group())))


def _phone_ok(m: re.Match[str]) -> bool:
    text = m.group()
    digits = len(_DIGIT.findall(text))
    if m.group("cc"):
        # "+44 20 7946 0958", "+4915112345678": E.164 allows up to 15 digits in all.
        return 8 <= digits <= 15
    groups = len(_SEP.split(text.replace("(", "").replace(")", "").strip()))
    if m.group("area"):
        return 7 <= digits <= 15
    # Without a country code or parentheses, demand a national shape: at least three
    # groups ("555 123 4567", "06 12 34 56 78", "555.123.4567"), which ordinary
    # numbers in a sentence ("4 people at 7 pm", "1990 2000") do not have.
    if groups < 3 or not 9 <= digits <= 15:
        return False
    seps = set(_SEP.findall(text))
    return len(seps) == 1  # one kind of separator: "1-2 3.4" is not a phone number


@dataclass(frozen=True)
class Redacted:
    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.counts)


@dataclass(frozen=True)
class _Rule:
    name: str
    pattern: re.Pattern[str]
    replacement: str
    accept: Callable[[re.Match[str]], bool] | None = None


class Redactor:
    """Replace e-mail addresses, phone, card, id numbers, IPv4 and configured patterns by tokens."""

    def __init__(self, cfg: ChatConfig) -> None:
        enabled = set(cfg.pii_builtin)
        builtin = [
            ("email", _Rule("email", _EMAIL, "<EMAIL>")),
            ("ip", _Rule("ip", _IPV4, "<IP>")),
            ("card", _Rule("card", _CARD, "<CARD>", _card_ok)),
            ("id_number", _Rule("id_number", _SSN, "<ID>")),
            ("phone", _Rule("phone", _PHONE, "<PHONE>", _phone_ok)),
            ("id_number", _Rule("id_number", _LONG_DIGITS, "<ID>")),
        ]
        self._rules = [rule for name, rule in builtin if name in enabled]
        for r in cfg.pii_rules:
            replacement = r.replacement if r.replacement is not None else f"<{r.name.upper()}>"
            self._rules.append(_Rule(r.name, re.compile(r.pattern), replacement))

    def redact(self, text: str) -> Redacted:
        spans: list[tuple[int, int, _Rule]] = []
        for rule in self._rules:
            for m in rule.pattern.finditer(text):
                start, end = m.span()
                if start == end or (rule.accept is not None and not rule.accept(m)):
                    continue
                if any(start < e and s < end for s, e, _ in spans):
                    continue
                spans.append((start, end, rule))
        if not spans:
            return Redacted(text, {})
        spans.sort(key=lambda x: x[0])
        parts: list[str] = []
        counts: dict[str, int] = {}
        pos = 0
        for start, end, rule in spans:
            parts.append(text[pos:start])
            parts.append(rule.replacement)
            counts[rule.name] = counts.get(rule.name, 0) + 1
            pos = end
        parts.append(text[pos:])
        return Redacted("".join(parts), counts)
