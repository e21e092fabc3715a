"""Per-document stages: normalisation, language id, quality and spam rules, PII, decontamination."""

from __future__ import annotations

import unicodedata

import pytest
from data_planted import EN, PT, write_jsonl

from oficina.data.stages.decontam import Decontam, DecontamConfig
from oficina.data.stages.langid import LangId, LangIdConfig
from oficina.data.stages.normalize import normalize_text
from oficina.data.stages.pii import cnpj_ok, cpf_ok, luhn_ok, redact
from oficina.data.stages.quality import Quality, QualityConfig
from oficina.data.stages.spam import Spam, SpamConfig

# ---------------------------------------------------------------------------- normalise


def test_nfc_keeps_accents_and_cleans_whitespace():
    decomposed = unicodedata.normalize("NFD", "Ação e coração")
    assert decomposed != "Ação e coração"
    text = f"  {decomposed}\u200b  com\u00a0espaços   \r\n\r\n\r\n\r\nfim\x07  \n"
    assert normalize_text(text) == "  Ação e coração com espaços\n\nfim"
    assert normalize_text(normalize_text(text)) == normalize_text(text)  # idempotent


# ---------------------------------------------------------------------------- language


@pytest.mark.parametrize(("text", "lang"), [(EN, "en"), (PT, "pt")])
def test_langid_labels_and_filters(text, lang):
    doc = {"text": text}
    assert LangId(LangIdConfig(languages=["pt", "en"])).process(doc) == (None, None)
    assert doc["lang"] == lang and doc["lang_score"] > 0.9
    assert (
        LangId(LangIdConfig(languages=["es"])).process({"text": text})[0] == "language_not_allowed"
    )


# ---------------------------------------------------------------------------- quality / spam


def _q(text: str, **kw) -> str | None:
    return Quality(QualityConfig(**kw)).process({"text": text, "lang": None})[0]


def test_quality_keeps_prose_and_names_the_failing_rule():
    assert _q(EN) is None and _q(PT) is None
    assert _q("too short to be a document") == "too_few_words"
    assert _q(" ".join(["#tag"] * 30) + " " + EN) == "symbol_ratio"
    assert (
        _q("\n".join(f"- {EN[i * 20 : (i + 1) * 20]}" for i in range(20)), min_words=10)
        == "bullet_lines"
    )
    assert _q("\n".join([EN] + ["Home | About | Contact"] * 5)) == "repeated_lines"
    assert _q(" ".join(["the river runs"] * 40)) is not None
    assert _q("12345 " * 60 + EN) == "few_alphabetic_words"
    assert _q(" ".join(f"word{i}x" for i in range(80)).replace("word", "zzz")) == "few_stop_words"
    assert _q(EN + " Lorem ipsum dolor sit amet.") == "lorem_ipsum"


def test_quality_cuts_boilerplate_lines():
    doc = {"text": EN + "\nWe use cookies to improve your experience.\n© 2024 All rights reserved."}
    reason, mods = Quality(QualityConfig()).process(doc)
    assert reason is None and mods == {"boilerplate_lines": 2} and doc["text"] == EN


def test_spam_rules():
    s = Spam(SpamConfig())
    assert s.check(EN) is None and s.check(PT) is None
    assert s.check("As an AI language model, I cannot browse the web. " + EN) == "machine_generated"
    assert s.check("Como um modelo de linguagem, não tenho opiniões. " + PT) == "machine_generated"
    assert s.check(EN + " Click here to BUY NOW!") == "spam_phrases"
    assert (
        s.check(" ".join(f"https://spam.example/{i}" for i in range(10)) + " " + EN) == "url_ratio"
    )
    assert s.check(EN.upper()) == "uppercase_ratio"
    assert s.check(EN.replace(".", "!!!")) == "exclamations"
    assert s.check(EN + " sooooooo good") == "repeated_characters"
    assert s.check(" ".join(["cheap shoes"] * 30) + " " + EN) == "keyword_stuffing"


# ---------------------------------------------------------------------------- PII

PII_CASES = {
    "EMAIL": ["maria.silva@exemplo.com.br", "john+news@mail.example.org"],
    "PHONE": [
        "+55 11 98765-4321",
        "+55 11 91234-1006",  # 13 digits that pass Luhn: still a phone, not a card
        "+55 (11) 3456-7890",
        "(11) 98765-4321",
        "+1 415 555 2671",
        "415-555-2671",
        "98765-4321",
    ],
    "IP": ["192.168.0.12", "8.8.8.8", "2001:db8:85a3::8a2e:370:7334", "fe80::1ff:fe23:4567:890a"],
    "CARD": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "3782 822463 10005"],
    "CPF": ["529.982.247-25", "52998224725"],
    "CNPJ": ["11.222.333/0001-81", "11222333000181"],
}
# Bare digit runs are CPF/CNPJ only after their name (else invoice numbers would be redacted).
CONTEXT = {"CPF": "CPF ", "CNPJ": "CNPJ nº ", "API_KEY": ""}
PII_CASES |= {
    "API_KEY": [
        "sk-proj-4f9aK2mQ8xZ1vB7nT3rY6wE0",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "AKIAIOSFODNN7EXAMPLE",
        "hf_abcdefghijklmnopqrstuvwxyzABCDEF12",
        "xoxb-1234567890-abcdefghij",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r",
    ],
}


@pytest.mark.parametrize(("kind", "value"), [(k, v) for k, vs in PII_CASES.items() for v in vs])
def test_every_pii_kind_is_redacted(kind, value):
    prefix = CONTEXT.get(kind, "") if value.isdigit() else ""
    text, counts = redact(f"Contato: {prefix}{value}, obrigado.")
    assert text == f"Contato: {prefix}[{kind}], obrigado." and counts == {kind: 1}


def test_secret_assignments_keep_the_name():
    text, counts = redact('api_key = "a8f5f167f44f4964e6c998dee827110c"\npassword: Tr0ub4dor3xyz9')
    assert text == 'api_key = "[API_KEY]"\npassword: [API_KEY]' and counts == {"API_KEY": 2}


CLEAN = [
    EN,
    PT,
    "Em 2023 a inflação foi de 4,62% e o PIB cresceu 2,9%; entre 1990-2000 a população dobrou.",
    "O produto custa R$ 1.234.567,89 e o CEP é 01310-100; a reunião é às 14:30:15 de 12/03/2024.",
    "Python 3.11.7 and numpy 2.4.6 were released; see ISBN 978-3-16-148410-0 and section 4.2.1.",
    "The invoice 1234567890123 was paid on 2024-01-15, and the order number is 98765432100.",
    "Slicing a[::2] and a[1:3:2] is explained in the reference; the ratio 16:9 is common.",
    "O CPF tem 11 dígitos e o CNPJ tem 14; 123.456.789-00 não é um CPF válido.",
    "The token is passed to the parser; a secret is only a secret if nobody knows it.",
    "Call me at extension 4321 or in room 101; the flight leaves at 9:45 from gate 23.",
]


@pytest.mark.parametrize("text", CLEAN)
def test_clean_prose_is_untouched(text):
    assert redact(text) == (text, {})


def test_check_digit_validators():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert cpf_ok("52998224725") and not cpf_ok("52998224724") and not cpf_ok("11111111111")
    assert cnpj_ok("11222333000181") and not cnpj_ok("11222333000182")


# ---------------------------------------------------------------------------- decontamination


def test_decontam_drops_or_cuts_leaked_items(tmp_path):
    item = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
    evals = write_jsonl(tmp_path / "test.jsonl", [{"text": item}, {"text": "short item here"}])
    leaked = f"{EN} {item.capitalize()}. {PT}"
    drop = Decontam(DecontamConfig(eval_files=[str(evals)]))
    assert drop.process({"text": leaked})[0] == "contaminated"
    assert drop.process({"text": EN})[0] is None
    assert drop.process({"text": EN + " Short item here."})[0] == "contaminated"
    cut = Decontam(DecontamConfig(eval_files=[str(evals)], action="cut"))
    doc = {"text": leaked}
    assert cut.process(doc) == (None, {"spans_cut": 1})
    assert "quick brown fox" not in doc["text"] and EN in doc["text"] and PT in doc["text"]
