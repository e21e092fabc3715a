"""PII redaction into typed placeholders: [EMAIL] [PHONE] [IP] [CARD] [CPF] [CNPJ] [API_KEY].

Patterns alone over-match prose (years, prices, versions, ranges), so every numeric kind is
confirmed by a check before it is redacted:
  * card numbers: 13-19 digits with a known issuer prefix and a valid Luhn checksum;
  * CPF (11 digits) and CNPJ (14 digits): both Brazilian check digits, repeated digits refused,
    and bare digit runs only right after the word "CPF" / "CNPJ";
  * IPv4: four octets ≤ 255 not embedded in a longer dotted number; IPv6 via ``ipaddress``;
  * phones: an international ``+CC`` prefix, an area code in parentheses, a Brazilian mobile
    ``9dddd-dddd``, or the North American ``ddd-ddd-dddd`` shape (d: a digit); 8-15 digits.
Secrets: well-known key prefixes (OpenAI ``sk-``, GitHub ``ghp_``, AWS ``AKIA``, Google
``AIza``, Slack ``xox?-``, Hugging Face ``hf_``, GitLab ``glpat-``), JWTs, ``Bearer`` tokens and
``api_key = ...`` style assignments (the value only is redacted).

Kinds are applied in a fixed order (secrets, e-mail, CNPJ, CPF, card, IP, phone) so one span is
never claimed twice. The report counts redactions per kind; no document is removed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from oficina.config import Section
from oficina.data.stages.base import MapStage, Outcome

KINDS = ("API_KEY", "EMAIL", "CNPJ", "CPF", "CARD", "IP", "PHONE")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def cpf_ok(digits: str) -> bool:
    if len(digits) != 11 or len(set(digits)) == 1:
        return False
    nums = [int(c) for c in digits]
    for n in (9, 10):
        s = sum(nums[i] * (n + 1 - i) for i in range(n))
        check = (s * 10) % 11 % 10
        if nums[n] != check:
            return False
    return True


def cnpj_ok(digits: str) -> bool:
    if len(digits) != 14 or len(set(digits)) == 1:
        return False
    nums = [int(c) for c in digits]
    for n, weights in (
        (12, [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]),
        (13, [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]),
    ):
        r = sum(a * b for a, b in zip(nums[:n], weights, strict=True)) % 11
        if nums[n] != (0 if r < 2 else 11 - r):
            return False
    return True


def _br_id_ok(m: re.Match, kind: str) -> bool:
    """Check digits, and -- for bare digits, which pass a check digit 1 time in 100 by chance --
    the word CPF/CNPJ just before (invoice and order numbers are not redacted)."""
    s = m.group(0)
    digits = _digits(s)
    if not (cpf_ok(digits) if kind == "CPF" else cnpj_ok(digits)):
        return False
    if s != digits:  # written with its punctuation: 529.982.247-25
        return True
    return kind.lower() in m.string[max(0, m.start() - 30) : m.start()].lower()


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _card_ok(s: str) -> bool:
    d = _digits(s)
    if not 13 <= len(d) <= 19 or d[0] not in "3456" and not d.startswith("2"):
        return False
    return luhn_ok(d)


def _ipv4_ok(s: str) -> bool:
    return all(0 <= int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in s.split("."))


def _ipv6_ok(s: str) -> bool:
    # Full form, or "::"-compressed with at least two groups ("::" alone is Python slicing).
    if ("::" not in s and s.count(":") != 7) or sum(bool(g) for g in s.split(":")) < 2:
        return False
    try:
        ipaddress.IPv6Address(s)
        return True
    except ValueError:
        return False


def _phone_ok(s: str) -> bool:
    return 8 <= len(_digits(s)) <= 15


_SECRET_PATTERNS = [
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",
    r"\bgithub_pat_[A-Za-z0-9_]{22,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bAIza[0-9A-Za-z_-]{35}",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    r"\bhf_[A-Za-z0-9]{30,}",
    r"\bglpat-[A-Za-z0-9_-]{20,}",
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    r"(?<=\bBearer )[A-Za-z0-9._~+/-]{20,}=*",
]
# key = value: only the value is replaced (lookbehind keeps "api_key = ").
_ASSIGN = re.compile(
    r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd|senha)"
    r"(\s*[:=]\s*[\"']?)([A-Za-z0-9_\-./+=]{12,})"
)

# Cheap tests that skip a pattern on text that cannot match it (most text has no secrets).
_SECRET_HINTS = (
    "sk-",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "AKIA",
    "AIza",
    "xox",
    "hf_",
    "glpat-",
    "eyJ",
    "Bearer ",
)
_ASSIGN_HINT = re.compile(r"(?i)key|secret|token|passw|senha")
# Every numeric kind needs a run of 7+ digits and separators; most documents have none.
_NUMERIC_HINT = re.compile(r"\d[\d .()/-]{5,}\d")
_IPV6_HINT = re.compile(r"[0-9A-Fa-f]{1,4}::?[0-9A-Fa-f]{1,4}:")
PREFILTER: dict[str, Callable[[str], bool]] = {
    "API_KEY": lambda t: any(h in t for h in _SECRET_HINTS),
    "EMAIL": lambda t: "@" in t,
    "IP": lambda t: _NUMERIC_HINT.search(t) is not None or _IPV6_HINT.search(t) is not None,
    "CNPJ": lambda t: _NUMERIC_HINT.search(t) is not None,
    "CPF": lambda t: _NUMERIC_HINT.search(t) is not None,
    "CARD": lambda t: _NUMERIC_HINT.search(t) is not None,
    "PHONE": lambda t: _NUMERIC_HINT.search(t) is not None,
}

PATTERNS: list[tuple[str, re.Pattern, Callable[[str], bool] | None]] = [
    ("API_KEY", re.compile("|".join(_SECRET_PATTERNS)), None),
    (
        "EMAIL",
        re.compile(
            r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
        ),
        None,
    ),
    ("CNPJ", re.compile(r"(?<![\d./-])\d{2}\.?\d{3}\.?\d{3}/?\d{4}-?\d{2}(?![\d/-]|\.\d)"), None),
    ("CPF", re.compile(r"(?<![\d./-])\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?![\d/-]|\.\d)"), None),
    # 13-19 digits, bare or in the printed groups (4-4-4-4..., Amex 4-6-5); never after "+".
    (
        "CARD",
        re.compile(
            r"(?<![\d+-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5})(?![\d-])"
        ),
        _card_ok,
    ),
    (
        "IP",
        re.compile(
            r"(?<![\d.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d]|\.\d)"
            r"|(?<![\w:])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){1,6}(?![\w:])"
        ),
        lambda s: _ipv4_ok(s) if "." in s else _ipv6_ok(s),
    ),
    (
        "PHONE",
        re.compile(
            r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]\d{2,5}){1,4}(?!\d)"
            r"|(?<!\w)\(\d{2,3}\) ?(?:9 ?)?\d{4,5}[- ]?\d{4}(?!\d)"
            r"|(?<![\d-])9\d{4}-\d{4}(?![\d-])"
            r"|(?<![\d.-])\d{3}[-.]\d{3}[-.]\d{4}(?![\d.-])"
        ),
        _phone_ok,
    ),
]


class PIIConfig(Section):
    type: Literal["pii"] = "pii"
    name: str | None = Field(None, description="name in the report (default: the type)")
    kinds: list[Literal["API_KEY", "EMAIL", "CNPJ", "CPF", "CARD", "IP", "PHONE"]] = Field(
        default_factory=lambda: list(KINDS), description="which kinds to redact"
    )


def redact(text: str, kinds: tuple[str, ...] | list[str] = KINDS) -> tuple[str, dict[str, int]]:
    """Text with each PII span replaced by ``[KIND]``, and how many of each kind."""
    counts: dict[str, int] = {}
    for kind, pattern, check in PATTERNS:
        if kind not in kinds:
            continue
        n = 0
        skip = kind in PREFILTER and not PREFILTER[kind](text)

        def sub(m: re.Match, kind=kind, check=check) -> str:
            nonlocal n
            if kind in ("CPF", "CNPJ"):
                ok = _br_id_ok(m, kind)
            else:
                ok = check is None or check(m.group(0))
            if ok:
                n += 1
                return f"[{kind}]"
            return m.group(0)

        if not skip:
            text = pattern.sub(sub, text)
        if kind == "API_KEY" and _ASSIGN_HINT.search(text):

            def sub_assign(m: re.Match) -> str:
                nonlocal n
                value = m.group(2)
                # A secret mixes letters and digits (or is long); prose after "token:" does not.
                if value.startswith("[") or not (
                    re.search(r"\d", value) and re.search(r"[A-Za-z]", value) or len(value) >= 24
                ):
                    return m.group(0)
                n += 1
                return m.group(0)[: m.start(2) - m.start(0)] + "[API_KEY]"

            text = _ASSIGN.sub(sub_assign, text)
        if n:
            counts[kind] = n
    return text, counts


class PII(MapStage):
    def process(self, doc: dict) -> Outcome:
        new, counts = redact(doc["text"], self.cfg.kinds)
        if counts:
            doc["text"] = new
            counts["documents"] = 1
            return None, counts
        return None, None
