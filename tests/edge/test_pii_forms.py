"""PII forms that used to leak (issue 15, point 6), and ordinary numbers that must not be redacted.

The table lives in ``edgeloop_sim.harness.pii_cases`` so the benchmark scores the
same rows. Before the fix, IDN e-mail, IPv6, IBANs, fullwidth IPv4 and ASCII
addresses inside unspaced CJK text came through untouched, the "X" of a Chinese
ID survived next to ``<ID>``, and Chinese mobiles came out as ``<ID>``. Chinese
landlines ("010-63553377", the most common number in the CrossWOZ dialogues)
and local numbers in a clause that names a phone leaked too.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from edge_agent.config import ChatConfig
from edge_agent.preprocess.pii import Redacted, Redactor, cn_id_ok, iban_ok
from edgeloop_sim.harness.pii_cases import CASES, NEGATIVES, POSITIVES, PiiCase, evaluate, fullwidth


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(ChatConfig())


def _id(case: PiiCase) -> str:
    return f"{case.category}: {case.form}"


@pytest.mark.parametrize("case", POSITIVES, ids=_id)
def test_pii_form_is_redacted_with_its_label(redactor: Redactor, case: PiiCase) -> None:
    out = redactor.redact(case.text)
    assert (out.text, out.counts) == (case.expected, dict(case.counts))


@pytest.mark.parametrize("case", NEGATIVES, ids=_id)
def test_ordinary_number_is_left_intact(redactor: Redactor, case: PiiCase) -> None:
    out = redactor.redact(case.text)
    assert (out.text, out.counts) == (case.text, {})


def test_precision_and_recall_on_the_whole_table(redactor: Redactor) -> None:
    ev = evaluate(redactor.redact, CASES)
    assert ev.wrong == []
    assert ev.overall.positives == len(POSITIVES) and ev.overall.negatives == len(NEGATIVES)
    assert ev.overall.recall == 1.0
    assert ev.overall.precision == 1.0
    for kind, tally in ev.by_kind.items():
        assert (kind, tally.recall, tally.precision) == (kind, 1.0, 1.0)


def test_the_table_has_every_form_for_every_new_category() -> None:
    # Each category that leaked has a separator-free form, a fullwidth form and a CJK-without-spaces form.
    for category in ("email", "ipv6", "iban", "cn_id", "cn_mobile", "cn_phone"):
        forms = " / ".join(c.form.lower() for c in POSITIVES if c.category == category)
        assert "fullwidth" in forms and "cjk" in forms, (category, forms)
    for category in ("price", "date", "time", "quantity", "version", "short_number", "year"):
        assert any(c.category == category for c in NEGATIVES), category


def test_scoring_counts_a_surviving_check_character_as_a_miss() -> None:
    # What the code before the fix did to an ID ending in X: the counts look right, the text leaks.
    case = next(c for c in POSITIVES if c.category == "cn_id" and "X" in c.text)
    ev = evaluate(lambda t: Redacted(t[: t.index("1")] + "<ID>X", {"id_number": 1}), [case])
    assert (ev.overall.tp, ev.overall.fn, ev.overall.fp) == (0, 1, 1)
    assert ev.by_kind["id_number"].recall == 0.0


def test_text_outside_the_pii_keeps_its_fullwidth_characters(redactor: Redactor) -> None:
    text = fullwidth("hi ") + "电话" + fullwidth("13800138000") + fullwidth(" ok")
    assert redactor.redact(text).text == fullwidth("hi ") + "电话<PHONE>" + fullwidth(" ok")


def test_mobile_is_a_phone_even_when_id_numbers_are_off() -> None:
    out = Redactor(ChatConfig(pii_builtin=["phone"])).redact("身份证号13800138000")
    assert (out.text, out.counts) == ("身份证号<PHONE>", {"phone": 1})


def test_iban_counts_under_the_id_number_switch() -> None:
    text = "DE89 3704 0044 0532 0130 00"
    assert Redactor(ChatConfig(pii_builtin=["id_number"])).redact(text).text == "<IBAN>"
    assert Redactor(ChatConfig(pii_builtin=["email"])).redact(text).text == text


_PLACEHOLDERS = ("<EMAIL>", "<IP>", "<IBAN>", "<ID>", "<PHONE>", "<CARD>")
_PIECES = [*"0123456789 -.:@+()Xx", "电话", "中", "ab", "de", fullwidth("1@."), "\u3002", "\uff0c"]


@settings(max_examples=500, deadline=None)
@given(hs.lists(hs.sampled_from(_PIECES), max_size=40).map("".join))
def test_redaction_is_a_fixed_point_and_counts_its_tokens(redactor: Redactor, text: str) -> None:
    # Digit soup, separators, CJK and fullwidth pieces: whatever is left is not PII the second time,
    # and every count is one token in the text (offsets survive the fullwidth fold).
    out = redactor.redact(text)
    assert redactor.redact(out.text).text == out.text
    assert sum(out.counts.values()) == sum(out.text.count(p) for p in _PLACEHOLDERS)


def test_iban_checksum() -> None:
    assert iban_ok("DE89 3704 0044 0532 0130 00")
    assert iban_ok("gb82west12345698765432")
    assert not iban_ok("DE89 3704 0044 0532 0130 01")
    assert not iban_ok("DE89")


def test_cn_id_check_character() -> None:
    assert cn_id_ok("11010519491231002X")
    assert cn_id_ok("11010519491231002x")
    assert cn_id_ok("440304199001011233")
    assert not cn_id_ok("11010519491231003X")
    assert not cn_id_ok("1101051949123100")
