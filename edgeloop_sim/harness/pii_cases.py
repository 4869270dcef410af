"""Real-world forms of PII, per category, and ordinary numbers that must survive redaction.

One table for two readers: ``tests/edge/test_pii_forms.py`` asserts every row
and perfect precision/recall on the whole table, ``bench/bench_pii.py`` reports
precision/recall per category and the redactor's throughput. Each PII category
has the forms people actually type: with and without separators, fullwidth
digits from a CJK input method, and inside CJK text with no spaces. The
negatives are what a chat utterance is full of (prices, dates, times,
quantities, versions, years); redacting them mangles the text the student
learns from, so a false positive costs as much as a miss.

Scoring is by exact output: a positive counts as found only if the whole text
comes out as expected (a trailing "X" of an ID left behind is a miss, however
the counts look), and every placeholder in a wrong output is a false positive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from edge_agent.preprocess.pii import Redacted

__all__ = ["CASES", "PiiCase", "PiiTally", "evaluate", "fullwidth"]


def fullwidth(text: str) -> str:
    """The fullwidth forms (U+FF01..U+FF5E) of printable ASCII, as CJK input methods type them."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@dataclass(frozen=True)
class PiiCase:
    category: str
    form: str
    text: str
    expected: str  # the redacted text; the text itself for a negative
    counts: Mapping[str, int] = field(default_factory=dict)  # kind -> placeholders expected

    @property
    def positive(self) -> bool:
        return bool(self.counts)


def _pos(category: str, form: str, text: str, expected: str, **counts: int) -> PiiCase:
    return PiiCase(category, form, text, expected, counts)


def _neg(category: str, form: str, text: str) -> PiiCase:
    return PiiCase(category, form, text, text)


_E, _IP, _ID, _PH = "<EMAIL>", "<IP>", "<ID>", "<PHONE>"

POSITIVES = [
    # e-mail: internationalised domains, plus-addressing, fullwidth, CJK without spaces
    _pos("email", "IDN domain", "mail user@bücher.de please", f"mail {_E} please", email=1),
    _pos("email", "IDN domain, plus", "to anna+news@müller.example.de.", f"to {_E}.", email=1),
    _pos("email", "CJK local part and domain", "用户@例子.中国", _E, email=1),
    _pos(
        "email",
        "CJK, fullwidth punctuation",
        "邮箱\uff1a用户@例子.中国\uff0c谢谢",
        f"邮箱\uff1a{_E}\uff0c谢谢",
        email=1,
    ),
    _pos(
        "email",
        "CJK no spaces, ASCII address",
        "我的邮箱是user@example.com谢谢",
        f"我的邮箱是{_E}谢谢",
        email=1,
    ),
    _pos("email", "CJK no spaces, IDN TLD", "联系support@例子.公司吧", f"联系{_E}吧", email=1),
    _pos("email", "plus-addressing", "john.doe+orders@example.com", _E, email=1),
    _pos("email", "fullwidth", "mail " + fullwidth("john@example.com"), f"mail {_E}", email=1),
    _pos("email", "Cyrillic IDN", "почта: иван@пример.рф", f"почта: {_E}", email=1),
    _pos("email", "punycode", "write user@xn--bcher-kva.de", f"write {_E}", email=1),
    # IPv6: full, compressed, IPv4-mapped, zone, brackets, fullwidth, CJK
    _pos("ipv6", "full", "ip 2001:0db8:85a3:0000:0000:8a2e:0370:7334", f"ip {_IP}", ip=1),
    _pos("ipv6", "full, upper case", "2001:DB8:0:0:8:800:200C:417A is mine", f"{_IP} is mine", ip=1),
    _pos("ipv6", "compressed", "server 2001:db8::1 is down", f"server {_IP} is down", ip=1),
    _pos("ipv6", "loopback", "ping ::1", f"ping {_IP}", ip=1),
    _pos("ipv6", "IPv4-mapped", "from ::ffff:192.0.2.128 today", f"from {_IP} today", ip=1),
    _pos("ipv6", "link-local with zone", "gateway fe80::1%eth0.", f"gateway {_IP}.", ip=1),
    _pos("ipv6", "bracketed with port", "open [2001:db8::8a2e:370:7334]:8080", f"open [{_IP}]:8080", ip=1),
    _pos(
        "ipv6", "CJK no spaces", "服务器地址是2001:db8::8a2e:370:7334请检查", f"服务器地址是{_IP}请检查", ip=1
    ),
    _pos("ipv6", "fullwidth", "地址" + fullwidth("2001:db8::1"), f"地址{_IP}", ip=1),
    _pos("ipv4", "CJK no spaces", "服务器192.168.1.10宕机了", f"服务器{_IP}宕机了", ip=1),
    _pos("ipv4", "fullwidth", "ip " + fullwidth("192.168.1.10"), f"ip {_IP}", ip=1),
    # IBAN: groups of four or not, letters in the BBAN, lower case, dashes, fullwidth, CJK
    _pos(
        "iban", "groups of four", "iban DE89 3704 0044 0532 0130 00 thanks", "iban <IBAN> thanks", id_number=1
    ),
    _pos("iban", "no separators", "DE89370400440532013000", "<IBAN>", id_number=1),
    _pos("iban", "letters in BBAN", "pay to GB82 WEST 1234 5698 7654 32.", "pay to <IBAN>.", id_number=1),
    _pos("iban", "long, letter inside", "FR14 2004 1010 0505 0001 3M02 606", "<IBAN>", id_number=1),
    _pos("iban", "lower case", "nl91 abna 0417 1643 00", "<IBAN>", id_number=1),
    _pos("iban", "dashes", "CH93-0076-2011-6238-5295-7", "<IBAN>", id_number=1),
    _pos("iban", "shortest (Norway)", "konto NO93 8601 1117 947", "konto <IBAN>", id_number=1),
    _pos(
        "iban", "CJK no spaces", "我的账户是DE89370400440532013000谢谢", "我的账户是<IBAN>谢谢", id_number=1
    ),
    _pos("iban", "fullwidth", fullwidth("DE89 3704 0044 0532 0130 00"), "<IBAN>", id_number=1),
    # Chinese resident ID: check character X (either case), grouped 6-8-4, fullwidth, CJK
    _pos("cn_id", "check X, CJK no spaces", "身份证号11010519491231002X", f"身份证号{_ID}", id_number=1),
    _pos(
        "cn_id",
        "check x, fullwidth colon",
        "身份证号码\uff1a11010519491231002x。",
        f"身份证号码\uff1a{_ID}。",
        id_number=1,
    ),
    _pos("cn_id", "check digit", "id 440304199001011233", f"id {_ID}", id_number=1),
    _pos("cn_id", "check X, English", "my id is 31010119851212456X ok", f"my id is {_ID} ok", id_number=1),
    _pos("cn_id", "grouped 6-8-4", "110105 19491231 002X", _ID, id_number=1),
    _pos("cn_id", "fullwidth", "身份证" + fullwidth("11010519491231002X"), f"身份证{_ID}", id_number=1),
    _pos("cn_id", "wrong check X", "证件号11010519491231003X号", f"证件号{_ID}号", id_number=1),
    # Chinese mobile: a phone number, even where the text calls it an ID
    _pos("cn_mobile", "plain", "13800138000", _PH, phone=1),
    _pos("cn_mobile", "CJK no spaces", "手机13800138000谢谢", f"手机{_PH}谢谢", phone=1),
    _pos("cn_mobile", "labelled as ID", "身份证号13912345678", f"身份证号{_PH}", phone=1),
    _pos("cn_mobile", "spaces 3-4-4", "call 138 0013 8000", f"call {_PH}", phone=1),
    _pos("cn_mobile", "dashes 3-4-4", "138-0013-8000", _PH, phone=1),
    _pos("cn_mobile", "+86 spaced", "+86 138 0013 8000", _PH, phone=1),
    _pos("cn_mobile", "+86 run", "电话+8613800138000谢谢", f"电话{_PH}谢谢", phone=1),
    _pos("cn_mobile", "0086", "0086 13800138000", _PH, phone=1),
    _pos("cn_mobile", "(+86)", "(+86)13800138000", _PH, phone=1),
    _pos("cn_mobile", "fullwidth", "电话\uff1a" + fullwidth("13800138000"), f"电话\uff1a{_PH}", phone=1),
    _pos("cn_mobile", "fullwidth, spaced", fullwidth("138 0013 8000"), _PH, phone=1),
    # Chinese landlines, service numbers, and local numbers in a clause that names a phone
    # (the forms of the CrossWOZ dialogues: 010-63553377, 01088374993, 电话是67010327, lists)
    _pos("cn_phone", "landline, dash", "电话是010-67498258。", f"电话是{_PH}。", phone=1),
    _pos("cn_phone", "landline, no separator", "电话是01088374993。", f"电话是{_PH}。", phone=1),
    _pos("cn_phone", "landline, 4-digit area", "tel 0755-86013388", f"tel {_PH}", phone=1),
    _pos("cn_phone", "landline, fullwidth parentheses", "\uff08010\uff0984659299", _PH, phone=1),
    _pos("cn_phone", "landline, fullwidth", fullwidth("010-67498258"), _PH, phone=1),
    _pos("cn_phone", "service number", "电话4006101101", f"电话{_PH}", phone=1),
    _pos("cn_phone", "service number, dashes", "call 400-610-1101", f"call {_PH}", phone=1),
    _pos("cn_phone", "labelled", "记一下\uff0c电话是67010327。", f"记一下\uff0c电话是{_PH}。", phone=1),
    _pos("cn_phone", "local with extension", "电话是88681188-6808。", f"电话是{_PH}。", phone=1),
    _pos("cn_phone", "list, CJK", "电话是67080561,010-65673663。", f"电话是{_PH},{_PH}。", phone=2),
    _pos("cn_phone", "list of mobiles", "13800138000 13900139000", f"{_PH} {_PH}", phone=2),
    _pos(
        "phone",
        "Arabic-Indic digits",
        "call +\u0664\u0664 \u0662\u0660 \u0667\u0669\u0664\u0666 \u0660\u0669\u0665\u0668",
        "call <PHONE>",
        phone=1,
    ),
    _pos(
        "phone",
        "Devanagari digits, CJK",
        "电话\u0967\u0969\u096e\u0966\u0966\u0967\u0969\u096e\u0966\u0966\u0966",
        "电话<PHONE>",
        phone=1,
    ),
    _pos("cn_phone", "English, labelled", "phone: 5551234", f"phone: {_PH}", phone=1),
]

NEGATIVES = [
    _neg("email", "no TLD", "user@localhost"),
    _neg("email", "spelled out", "email me at john at example dot com"),
    _neg("email", "handle", "follow @bob for 3 updates"),
    _neg("price", "yen", "¥1299"),
    _neg("price", "yen, CJK", "这个卖¥1299吗"),
    _neg("price", "yen, fullwidth digits", "价格￥" + fullwidth("1299")),
    _neg("price", "dollars", "$19.99"),
    _neg("price", "thousands", "1,299.00"),
    _neg("price", "millions", "$1,299,999.99 total"),
    _neg("price", "euro, comma decimals", "total €1.299,00"),
    _neg("price", "yuan, CJK", "花了3,500,000元"),
    _neg("price", "spaced thousands", "12 999 kr"),
    _neg("date", "ISO", "2026-12-06"),
    _neg("date", "CJK", "2026年12月6日"),
    _neg("date", "CJK with time", "2026年12月6日下午3点"),
    _neg("date", "US", "12/06/2026"),
    _neg("date", "European", "06.12.2026"),
    _neg("date", "slashes", "2026/12/06"),
    _neg("date", "compact", "20261206"),
    _neg("date", "timestamp", "2026-12-06T12:30:45Z"),
    _neg("date", "date and time", "2026-12-06 12:30:45"),
    _neg("time", "hh:mm", "meet at 10:30"),
    _neg("time", "hh:mm:ss", "12:30:45"),
    _neg("time", "hh:mm:ss, period", "alarm at 06:30:00."),
    _neg("time", "CJK range", "下午3:30到5:45"),
    _neg("time", "range", "open 9:00-17:30"),
    _neg("time", "ratio", "the ratio is 16:9"),
    _neg("time", "score", "score 3:2:1"),
    _neg("time", "C++ scope", "std::vector"),
    _neg("quantity", "pizzas", "order 3 pizzas"),
    _neg("quantity", "CJK", "买2件送1件"),
    _neg("quantity", "units", "500 units"),
    _neg("quantity", "with price", "1000 pieces at 19.99 each"),
    _neg("quantity", "packs", "12 x 24 cans"),
    _neg("quantity", "fullwidth, CJK", "要" + fullwidth("3") + "杯咖啡"),
    _neg("version", "major.minor", "version 3.2"),
    _neg("version", "semver", "v2.10.3"),
    _neg("version", "python", "python 3.12.1"),
    _neg("version", "three parts", "1.2.3"),
    _neg("short_number", "room", "room 12 for 3 nights"),
    _neg("short_number", "people", "book a table for 4 people at 7 pm"),
    _neg("short_number", "8 digits", "12345678 is short"),
    _neg("short_number", "pin", "pin 1234"),
    _neg("year", "plain", "songs from 2016"),
    _neg("year", "several", "songs from 1990 2000 and 2010"),
    _neg("year", "CJK", "2026年的歌"),
    _neg("prose", "CJK", "我想订一张明天去上海的机票"),
    _neg("prose", "CJK with time", "明天下午3点提醒我开会"),
    _neg("iban", "code, bad checksum", "product XY12 3456 7890 ABCD"),
    _neg("cn_phone", "phone bill", "电话费是12345678元"),
    _neg("cn_phone", "phone price", "手机价格是2999元"),
    _neg("cn_phone", "unlabelled 8 digits", "订单号20261206"),
    _neg("cn_phone", "labelled, not a number", "电话里说2026年12月6日到"),
    _neg("cn_phone", "postcode", "邮编100080"),
]

CASES: tuple[PiiCase, ...] = tuple(POSITIVES + NEGATIVES)


@dataclass
class PiiTally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    positives: int = 0
    negatives: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


@dataclass
class Evaluation:
    by_category: dict[str, PiiTally]
    by_kind: dict[str, PiiTally]
    overall: PiiTally
    wrong: list[tuple[PiiCase, str]]  # (case, what came out)


def evaluate(redact: Callable[[str], Redacted], cases: Iterable[PiiCase] = CASES) -> Evaluation:
    """Case-level tallies per category and placeholder-level tallies per kind."""
    by_category: dict[str, PiiTally] = {}
    by_kind: dict[str, PiiTally] = {}
    overall = PiiTally()
    wrong: list[tuple[PiiCase, str]] = []
    for case in cases:
        out = redact(case.text)
        exact = out.text == case.expected and dict(out.counts) == dict(case.counts)
        if not exact:
            wrong.append((case, out.text))
        cat = by_category.setdefault(case.category, PiiTally())
        for t in (cat, overall):
            if case.positive:
                t.positives += 1
                t.tp += exact
                t.fn += not exact
                t.fp += out.changed and not exact
            else:
                t.negatives += 1
                t.fp += out.changed
        kinds = set(case.counts) | set(out.counts)
        for kind in kinds:
            k = by_kind.setdefault(kind, PiiTally())
            want, got = case.counts.get(kind, 0), out.counts.get(kind, 0)
            k.positives += want
            if exact:
                k.tp += want
            else:
                k.fn += want
                k.fp += got
    return Evaluation(by_category, by_kind, overall, wrong)
