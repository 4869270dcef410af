"""PII redaction before any chat text leaves the edge (hard examples, escalations, caches).

Regexes find candidates; checks that a regex cannot express (the Luhn digit of
a card, the mod-97 of an IBAN, the ISO 7064 MOD 11-2 character of a Chinese
resident ID, the digit count of a phone number, what ``ipaddress`` accepts as
IPv6) decide. The bias is towards precision on ordinary utterances: "a table
for 4 at 7 pm", "rate it 5 out of 6", "songs from 2016", "¥1299", "12:30:45"
must come through intact, or the student learns from mangled text and the
cloud cannot label it.

The built-in patterns run against a copy of the text in which fullwidth ASCII
(U+FF01..U+FF5E: the digits, letters and "@" that CJK input methods type in
fullwidth mode), the ideographic space and the decimal digits of every script
(Arabic-Indic, Devanagari, ...) are folded to ASCII, one code point for one, so
every span found in the copy is the same span in the original. The copy is
only made when the text has one of the characters that matter (a fullwidth
letter, digit or separator, or a non-ASCII digit): fullwidth punctuation
alone, common in Chinese text, changes no match. Boundaries are "no ASCII
letter or digit next to it" rather than ``\\b``: CJK text has no spaces, and
"电话13800138000谢谢" must still match. Configured rules run on the original
text, as they always did.

Overlaps are resolved by a fixed priority (email, ip, IBAN, Chinese ID,
Chinese mobile/landline/service numbers, card, SSN, phone, long digit runs,
then the configured rules), so a replacement token is never re-matched by a
later pattern and the more specific reading of a digit run wins ("13800138000"
is a phone number, not an ID). Counts are keyed by the configured kind (the switch in
``chat.pii_builtin``): an IBAN is an account number and counts as
``id_number``, like the long account numbers before it, but its token says
``<IBAN>``.

Cost matters (this runs on every utterance): a rule is skipped unless the
text has the character it cannot do without ("@", ":", ".") and at least as
many digits as its shortest match, so prose costs one scan for digits and a
few substring tests, and "a table for 4 at 7 pm" runs no digit pattern at all.
Libraries were weighed and not taken: ``python-stdnum`` validates IBANs and
Chinese IDs but does not find them in text (the regexes would stay; only two
ten-line checksums would go); ``phonenumbers`` carries every numbering plan's
metadata and its matcher costs far more than a regex pass; ``presidio`` needs
spaCy. IPv6 validation is the stdlib's ``ipaddress``.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from edge_agent.config import ChatConfig

__all__ = ["Redacted", "Redactor", "cn_id_ok", "iban_ok", "luhn_ok"]

# Fullwidth ASCII, the ideographic space and every script's decimal digits (all below
# U+1FC00), one code point each: offsets survive the fold.
_NON_ASCII_DIGITS = [c for c in range(0x80, 0x1FC00) if chr(c).isdecimal()]
_FOLD = (
    {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
    | {0x3000: 0x20}
    | {c: 0x30 + unicodedata.digit(chr(c)) for c in _NON_ASCII_DIGITS}
)


def _char_class(codes: list[int]) -> str:
    """A regex class of code points as ranges: a long list of single characters makes a slow search."""
    runs: list[list[int]] = []
    for c in sorted(codes):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "[" + "".join(f"\\U{a:08x}-\\U{b:08x}" if a < b else f"\\U{a:08x}" for a, b in runs) + "]"


# What makes the fold worth doing: fullwidth letters, digits and separators, the ideographic
# space, non-ASCII digits. Fullwidth punctuation alone (U+FF0C, U+FF1A) changes no match.
_FOLD_TRIGGER = re.compile(
    _char_class(
        [c for c in range(0xFF01, 0xFF5F) if chr(c - 0xFEE0).isalnum() or chr(c - 0xFEE0) in "@.:+-()%_"]
        + [0x3000]
        + _NON_ASCII_DIGITS
    )
)

# --- e-mail. The local part is ASCII (then whatever precedes it, e.g. CJK text with no
# space, is not swallowed) or ends in a non-ASCII letter ("用户@例子.中国"). Domain labels
# may be any letters (IDN: "bücher.de", "例子.中国"); the top-level domain is ASCII and
# ends at the next non-ASCII-alphanumeric, punycode, a known CJK IDN TLD (a run of CJK
# letters cannot end itself in unspaced text), or another script's letters.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_TLDS = sorted(
    "中国 中國 中文网 公司 网络 網絡 网址 网店 商城 商店 在线 在線 集团 手机 移动 信息 "
    "游戏 企业 娱乐 购物 时尚 香港 台湾 台灣 新加坡 澳門 澳门 政务 公益 "
    "我爱你 みんな コム 닷컴 닷넷 한국 삼성".split(),
    key=len,
    reverse=True,
)
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_EMAIL = re.compile(
    r"(?:(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+|(?<![\w.%+-])[\w.%+-]*[^\W\x00-\x7f])"
    rf"@(?:{_LABEL}\.)+"
    r"(?:xn--[A-Za-z0-9-]{1,59}(?![A-Za-z0-9-])|[A-Za-z]{2,24}(?![A-Za-z0-9-])"
    rf"|(?:{'|'.join(_CJK_TLDS)})|(?:(?![{_CJK}])[^\W\d_]){{2,24}}(?![\w-]))"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)", re.ASCII)
# IPv6 candidates: hex groups and at least two colons, an optional dotted IPv4 tail
# ("::ffff:192.0.2.128") and zone ("fe80::1%eth0"); ipaddress decides.
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_.:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
    r"(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?:%[0-9A-Za-z_]{1,16})?(?![0-9A-Za-z_:]|\.\d)",
    re.ASCII,
)
# IBAN: country, check digits, 11-30 letters/digits, in groups of four or not; mod-97 decides.
_IBAN = re.compile(
    r"(?<![0-9A-Za-z])[A-Za-z]{2}\d{2}(?:[ -]?[0-9A-Za-z]{4}){2,7}(?:[ -]?[0-9A-Za-z]{1,3})?(?![0-9A-Za-z])",
    re.ASCII,
)
# Chinese resident ID: region (6), birth date YYYYMMDD, sequence (3), check character 0-9/X,
# optionally split 6-8-4. MOD 11-2 decides.
_CN_ID = re.compile(
    r"(?<![0-9A-Za-z])[1-9]\d{5}([ -]?)(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
    r"\1\d{3}[0-9Xx](?![0-9A-Za-z])",
    re.ASCII,
)
# Chinese mobile: 1[3-9]x xxxx xxxx, optional +86/0086; never a piece of a longer digit run.
_CN_MOBILE = re.compile(
    r"(?<![0-9A-Za-z+])(?<!\d-)(?:\(?(?:\+|00)86\)?[ -]?)?1[3-9]\d([ -]?)\d{4}\1\d{4}(?!-?\d|[A-Za-z])",
    re.ASCII,
)
# Chinese landline: area code 0xx/0xxx (optionally in parentheses), local number of 7-8
# digits not starting with 0 or 1; and the nationwide 400/800 service numbers.
_CN_LANDLINE = re.compile(
    r"(?<![0-9A-Za-z+])(?<!\d-)(?:\(0[1-9]\d{1,2}\)|0[1-9]\d{1,2})[ -]?[2-9]\d{6,7}(?!-?\d|[A-Za-z])",
    re.ASCII,
)
_CN_SERVICE = re.compile(
    r"(?<![0-9A-Za-z+])(?<!\d[ -])[48]00([ -]?)\d{3}\1\d{4}(?![ -]?\d|[A-Za-z])", re.ASCII
)
# A bare 7-8 digit local number ("电话是<PHONE>,67080562", "call 5551234", "64045361-3015") is a
# phone number only in a clause that names a phone; elsewhere it is as likely a date (20261206)
# or an order number. The clause runs from the word to the end of the sentence; the word stays.
_PHONE_CLAUSE = re.compile(
    r"(?i:电话|手机|座机|固话|联系方式|热线|拨打|致电|tel|phone|call)[^。\uff1b;\uff01!\uff1f?\n]{1,80}"
)
_LOCAL_NUMBER = re.compile(r"(?<![0-9A-Za-z.-])[2-9]\d{6,7}(?:-\d{1,4})?(?![0-9A-Za-z元块%]|\.\d|-\d)")
# 13-19 digits, single spaces or dashes allowed between any two of them.
_CARD = re.compile(r"(?<![\d+])\d(?:[ -]?\d){12,18}(?![\d])")
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?![\d])")
# A 17-digit run with a check character X is still an ID number: the X must not survive.
_LONG_DIGITS = re.compile(r"(?<!\d)(?:\d{17}[Xx](?![0-9A-Za-z])|\d{9,}(?!\d))")
# A phone candidate: optional +country code, optional (area), then digit groups joined by
# one separator each. _phone_ok() decides from the digit count and the shape.
_PHONE = re.compile(
    r"(?<![A-Za-z\d_+])"
    r"(?P<cc>\+\d{1,3}[ .-]?)?"
    r"(?P<area>\(\d{1,5}\)[ .-]?)?"
    r"\d{1,12}(?:[ .-]\d{1,12}){0,5}"
    r"(?![A-Za-z\d_])"
)
_SEP = re.compile(r"[ .-]")
_DIGIT = re.compile(r"\d")
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]+")
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


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


def iban_ok(iban: str) -> bool:
    """ISO 13616 mod-97: the first four characters moved to the end, letters as 10..35, remainder 1."""
    s = "".join(iban.split()).replace("-", "").upper()
    if not 15 <= len(s) <= 34 or not s.isalnum() or not s.isascii():
        return False
    return int("".join(str(int(ch, 36)) for ch in s[4:] + s[:4])) % 97 == 1


def cn_id_ok(number: str) -> bool:
    """ISO 7064 MOD 11-2 check character of an 18-character Chinese resident ID."""
    s = number.replace(" ", "").replace("-", "").upper()
    if len(s) != 18 or not s[:17].isdigit():
        return False
    rest = sum(int(d) * w for d, w in zip(s[:17], _CN_ID_WEIGHTS, strict=True)) % 11
    return s[17] == "10X98765432"[rest]


def _card_ok(m: re.Match[str]) -> bool:
    return luhn_ok("".join(_DIGIT.findall(m.group())))


def _iban_ok(m: re.Match[str]) -> bool:
    return iban_ok(m.group())


def _cn_id_ok(m: re.Match[str]) -> bool:
    return cn_id_ok(m.group())


def _ipv6_ok(m: re.Match[str]) -> bool:
    text = m.group()
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    # "::" and "ab::cd" parse too; an address someone types has a digit or several groups.
    return any(ch.isdigit() for ch in text) or len(_HEX_GROUP.findall(text)) >= 3


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
    needs: str = ""  # a character the text must contain ("@", ":") before the rule is worth running
    min_digits: int = 0  # nor is it worth running on text with fewer digits than any match has
    within: re.Pattern[str] | None = None  # what is replaced inside each match (which is only context)


_BUILTIN = (
    _Rule("email", _EMAIL, "<EMAIL>", needs="@"),
    _Rule("ip", _IPV6, "<IP>", _ipv6_ok, needs=":"),
    _Rule("ip", _IPV4, "<IP>", needs=".", min_digits=4),
    _Rule("id_number", _IBAN, "<IBAN>", _iban_ok, min_digits=2),
    _Rule("id_number", _CN_ID, "<ID>", _cn_id_ok, min_digits=17),
    _Rule("phone", _CN_MOBILE, "<PHONE>", min_digits=11),
    _Rule("phone", _CN_LANDLINE, "<PHONE>", min_digits=10),
    _Rule("phone", _CN_SERVICE, "<PHONE>", min_digits=10),
    _Rule("phone", _PHONE_CLAUSE, "<PHONE>", min_digits=7, within=_LOCAL_NUMBER),
    _Rule("card", _CARD, "<CARD>", _card_ok, min_digits=13),
    _Rule("id_number", _SSN, "<ID>", min_digits=9),
    _Rule("phone", _PHONE, "<PHONE>", _phone_ok, min_digits=7),
    _Rule("id_number", _LONG_DIGITS, "<ID>", min_digits=9),
)


def _matches(rule: _Rule, subject: str) -> Iterator[re.Match[str]]:
    if rule.within is None:
        yield from rule.pattern.finditer(subject)
        return
    for context in rule.pattern.finditer(subject):
        # pos/endpos keep the lookbehinds seeing the real text before the context.
        yield from rule.within.finditer(subject, context.start(), context.end())


class Redactor:
    """Replace e-mail, phone, card, IBAN and id numbers, IP addresses and configured patterns by tokens."""

    def __init__(self, cfg: ChatConfig) -> None:
        enabled = set(cfg.pii_builtin)
        self._builtin = [rule for rule in _BUILTIN if rule.name in enabled]
        self._custom: list[_Rule] = []
        for r in cfg.pii_rules:
            replacement = r.replacement if r.replacement is not None else f"<{r.name.upper()}>"
            self._custom.append(_Rule(r.name, re.compile(r.pattern), replacement))

    def redact(self, text: str) -> Redacted:
        spans: list[tuple[int, int, _Rule]] = []
        folded = text if text.isascii() or not _FOLD_TRIGGER.search(text) else text.translate(_FOLD)
        digits = len(_DIGIT.findall(folded))
        for rules, subject in ((self._builtin, folded), (self._custom, text)):
            for rule in rules:
                if digits < rule.min_digits or (rule.needs and rule.needs not in folded):
                    continue
                for m in _matches(rule, subject):
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
