"""Redaction of personal data: e-mails, phone numbers, card and IBAN numbers, secrets, IP addresses,
street addresses, and (when asked) other people's names.

Each match becomes a typed placeholder ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]", "[SECRET]", "[IP]",
"[ADDRESS]"; "[EXPIRY]" and "[CVV]" next to a card) and is counted ("redacted email", ...). Precision
matters as much as recall: a model trained on text where every date, version or price became "[PHONE]"
learns nonsense, so

- card numbers must pass the Luhn check (python-stdnum), with an issuer prefix that allows their
  length (13-19); an expiry date or CVV within 80 characters after a card goes with it;
- IBANs must have their country's length and format and pass the mod-97 check (python-stdnum);
- phone numbers are checked with Google's phonenumbers metadata, and must be written like phone
  numbers (see `redact_phones`): a country code, a trunk 0, a national grouping, a keyword, or the
  user's region (`region`);
- secrets are known token shapes (OpenAI, GitHub, Slack, AWS, Google, Stripe, Hugging Face,
  Discord and Telegram bot tokens, JWTs, private keys, webhook URLs), a long value after a
  keyword such as "api_key=" / "token:" / "password:" (a bare 40-hex git SHA is not a secret), and
  the value of a secret-named URL parameter of any length (?token=, &sig=, X-Amz-Signature=, ...);
- IP addresses are what `ipaddress` accepts, less version-like quads (see `redact_phones`);
- addresses are a house number next to a street word in nine locales (see `redact_addresses`).

`redact` runs the rules until nothing changes, so redacting twice gives the same text as once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator
from stdnum import iban, luhn

from twinlm.prepare.clean import Msg
from twinlm.prepare.pseudonyms import Pseudonyms
from twinlm.prepare.redact_addresses import addresses
from twinlm.prepare.redact_phones import default_region, ips, phones

RedactKind = Literal["email", "phone", "card", "iban", "secret", "address", "ip"]
KINDS: tuple[RedactKind, ...] = ("email", "phone", "card", "iban", "secret", "address", "ip")


def _hints(words: str) -> re.Pattern[str]:
    """A prefilter: one of these "|"-separated substrings must occur before a costlier pattern is worth
    running (a regex of literals beats `any(w in text ...)` several times)."""
    return re.compile("|".join(map(re.escape, words.split("|"))))


class RedactConfig(BaseModel):
    """Personal data replaced by typed placeholders at build time, counted per kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Replace personal data with placeholders such as [EMAIL].")
    except_me: bool = Field(
        True, description="Leave your own messages as they are (only other people's data is redacted)."
    )
    kinds: list[RedactKind] = Field(
        list(KINDS),
        description="What to redact: " + ", ".join(KINDS) + " (secrets are API keys, tokens, passwords and "
        "the secret values in URLs; card includes the expiry date and CVV written next to a card number).",
    )
    region: str | None = Field(
        "auto",
        description="Your country (ISO code such as US, GB, DE): phone numbers written without a country "
        "code are read as this region's first. 'auto': from the system locale (LANG); null: none (numbers "
        "are still found by their country code, a trunk 0 or a known national grouping).",
    )
    pseudonymize_people: bool = Field(
        False,
        description="Also replace the names of the people in `people:` where messages mention them, with "
        "one consistent pseudonym per person (e.g. every 'Alice' becomes 'Robin').",
    )

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {value!r}: use a two-letter country code such as US, GB or DE")
        return value.upper()


# ------------------------------------------------------------------------------- secrets

_ID = r"A-Za-z0-9_\-"  # the alphabet of most tokens
_TOKEN = re.compile(
    rf"(?<![{_ID}])(?:"
    rf"sk-(?:ant-|proj-|svcacct-|admin-)?[{_ID}]{{20,}}"  # OpenAI, Anthropic
    r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub
    r"|xox[abposre]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}"  # AWS access key ids
    r"|AIza[0-9A-Za-z_\-]{35}|ya29\.[0-9A-Za-z_\-]{20,}"  # Google API key, OAuth token
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWT
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{20,}"  # Stripe
    r"|hf_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_\-]{20,}|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_\-]{50,}"
    r"|[MNO][A-Za-z0-9_\-]{23,27}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,40}"  # Discord bot token
    r"|[0-9]{8,10}:[A-Za-z0-9_\-]{35}"  # Telegram bot token
    r"|https://hooks\.slack\.com/services/[A-Za-z0-9/]+"
    r"|https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_\-]+"
    rf")(?![{_ID}])"
)
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.DOTALL
)
# A long value after a key word: "api_key=...", "token: ...", '"client_secret": "..."', "GITHUB_TOKEN=".
# The key word may end a longer name; the name's start is not matched (a lazy "[\w-]*?" before the key
# word made the scan quadratic: 37 s on 20,000 characters of "a-a-a-...token=").
_KEYWORD_VALUE = re.compile(
    r"(?i)((?:token|api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?key|private[_-]?key|"
    r"auth[_-]?(?:token|key|code))s?[\"']?\s*[:=]\s*[\"']?|\bbearer\s+)([A-Za-z0-9_\-+/=.~]{16,})"
)
_PASSWORD = re.compile(
    r"(?i)(\b(?:password|passwd|passwort|contraseña|mot de passe|mdp|pwd|pw)[\"']?\s*[:=]\s*[\"']?)"
    r"([^\s\"'\[][^\s\"']{3,})"
)
_URL_PASSWORD = re.compile(r"(://[^\s:/@\[\]]+:)(?!\[SECRET\]@)([^\s/@]+)(@)")
_DIGIT = re.compile(r"[0-9]")
_HAS_LETTER = re.compile(r"[A-Za-z]")
_PASSWORD_HINTS = _hints("passw|pwd|pw|mdp|contraseña|mot de passe")
_KEYWORD_HINTS = _hints("token|key|secret|auth|bearer")


_LONG_RUN = re.compile(r"\S{16}")  # every token shape and keyword value is this long without a space


def _secrets(text: str, counts: Counter[str]) -> str:
    # Most messages hold no candidate at all: say so before building the replacement functions.
    lowered = text.lower()
    long_run = _LONG_RUN.search(text) is not None
    if not (
        long_run
        or "-----BEGIN" in text
        or _PASSWORD_HINTS.search(lowered)
        or ("://" in text and "@" in text)
        or ("=" in text and ("?" in text or "#" in text))
    ):
        return text
    return _secrets_in(text, lowered, long_run, counts)


def _secrets_in(text: str, lowered: str, long_run: bool, counts: Counter[str]) -> str:
    def whole(m: re.Match[str]) -> str:
        value = m.group(0)
        # "sk-learn-is-a-nice-library" is words, not a key: real keys are random and have digits.
        if value.startswith(("sk-", "xox")) and not _DIGIT.search(value):
            return value
        counts["redacted secret"] += 1
        return "[SECRET]"

    def value_only(m: re.Match[str]) -> str:
        value = m.group(2)
        if not (_DIGIT.search(value) and _HAS_LETTER.search(value)):
            return m.group(0)
        counts["redacted secret"] += 1
        return m.group(1) + "[SECRET]"

    def password(m: re.Match[str]) -> str:
        counts["redacted secret"] += 1
        return m.group(1) + "[SECRET]"

    def url_password(m: re.Match[str]) -> str:
        counts["redacted secret"] += 1
        return m.group(1) + "[SECRET]" + m.group(3)

    if "-----BEGIN" in text:
        text = _PRIVATE_KEY.sub(whole, text)
        lowered = text.lower()
        long_run = _LONG_RUN.search(text) is not None
    if long_run:
        text = _TOKEN.sub(whole, text)
        if _KEYWORD_HINTS.search(lowered):
            text = _KEYWORD_VALUE.sub(value_only, text)
    if _PASSWORD_HINTS.search(lowered):
        text = _PASSWORD.sub(password, text)
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(url_password, text)
    if "=" in text and ("?" in text or "#" in text):
        text = _URL_TOKEN.sub(lambda m: _url_secrets(m.group(0), counts), text)
    return text


# Tokens (runs without spaces, quotes or brackets; matched whole, so the scan stays linear) whose query
# or fragment holds parameters: "https://x.io/cb?code=abc&state=1", "s3.amazonaws.com/f?X-Amz-...".
_URL_TOKEN = re.compile(r"[^\s<>\"'()]+")
_URL_PARAM = re.compile(r"(?<=[?&;#])([A-Za-z0-9_.\-]+=)([^&#;\s]+)")
_NAME_PARTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# Parameter names (or a part of one: "access_token", "X-Amz-Signature", "sessionId") whose value is a
# secret whatever its length: signed URLs and OAuth redirects carry short codes too.
_SECRET_PARAMS = frozenset(
    "token key sig signature code pwd password passwd pass session sessionid sid auth secret credential "
    "credentials apikey jwt otp ticket hmac policy ssid authorization".split()
)
# "country_code=US", "sort_key=name": a secret word after one of these names a setting, not a secret.
_BENIGN_PARAMS = frozenset(
    "country lang language locale currency zip postal post status error response promo color colour "
    "region area product item sort order primary foreign zoom".split()
)


def _url_secrets(url: str, counts: Counter[str]) -> str:
    if not ("?" in url or "#" in url) or "=" not in url:
        return url

    def value(m: re.Match[str]) -> str:
        name = m.group(1)[:-1]
        parts = [p.lower() for p in _NAME_PARTS.findall(name)]
        if m.group(2) == "[SECRET]" or not parts or parts[0] in _BENIGN_PARAMS:
            return m.group(0)
        if name.lower() not in _SECRET_PARAMS and not _SECRET_PARAMS.intersection(parts):
            return m.group(0)
        counts["redacted secret"] += 1
        return m.group(1) + "[SECRET]"

    return _URL_PARAM.sub(value, url)


# ------------------------------------------------------------------------------- e-mail

_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])"
)


# ------------------------------------------------------------------------------- numbers

# fmt: off
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
# fmt: on
_IBAN_START = re.compile(r"[A-Za-z](?<![A-Za-z0-9][A-Za-z])[A-Za-z][0-9]{2}")


def _ibans(text: str, counts: Counter[str]) -> str:
    """IBANs, written compact or in groups separated by single spaces, in upper or lower case."""
    parts: list[str] = []
    done = pos = 0  # text[:done] is in parts; the search resumes at pos
    while (m := _IBAN_START.search(text, pos)) is not None:
        start = m.start()
        length = _IBAN_LENGTHS.get(text[start : start + 2].upper())
        end = _iban_end(text, start, length) if length else None
        if end is None or not iban.is_valid(text[start:end].replace(" ", "").upper()):
            pos = start + 1
            continue
        parts += [text[done:start], "[IBAN]"]
        counts["redacted iban"] += 1
        done = pos = end
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def _iban_end(text: str, start: int, length: int) -> int | None:
    """End of an IBAN of `length` characters at `start` (single spaces allowed between characters)."""
    i, seen = start, 0
    n = len(text)
    while i < n and seen < length:
        c = text[i]
        if c.isascii() and c.isalnum():
            seen += 1
        elif c != " " or i + 1 >= n or text[i + 1] == " " or seen < 4:
            break
        i += 1
    if seen < length or (i < n and text[i].isascii() and text[i].isalnum()):
        return None
    return i


# Not preceded by a digit, nor by a digit and one separator: a card is a whole run of digits.
# A space and an expiry date ("4111 ... 1111 03/28") may follow.
_CARD = re.compile(
    r"[0-9](?<![0-9]{2})(?<![0-9][ -][0-9])(?:[ -]?[0-9]){12,18}(?![ -]?[0-9](?![0-9]/[0-9]))(?![/.][0-9])"
)


def _card_shaped(digits: str) -> bool:
    """The issuer prefix allows this length (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay,
    Maestro): ids and order numbers that happen to pass Luhn rarely also look like a card."""
    n, p2, p3, p4 = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16
    if p2 in (34, 37):
        return n == 15
    if p4 == 6011 or 644 <= p3 <= 649 or p2 in (62, 65) or 3528 <= p4 <= 3589:
        return 16 <= n <= 19
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19
    return p2 in (50, 56, 57, 58, 63, 67)  # Maestro: 12 to 19 digits


def _card(m: re.Match[str], counts: Counter[str]) -> str:
    raw = m.group(0)
    digits = raw.replace(" ", "").replace("-", "")
    if (" " in raw and "-" in raw) or not _card_shaped(digits) or not luhn.is_valid(digits):
        return raw
    counts["redacted card"] += 1
    return "[CARD]"


# Next to a card number: "exp 12/25", "valid thru 01/2027", "CVV 123", "12/25 123".
_EXPIRY = re.compile(
    r"(?i)(?:(?:exp(?:iry|ires|iration)?|valid(?: thru| through| until)?|gültig bis|ablauf|expira(?:ción)?|"
    r"vence|validade|scad(?:enza)?|mm/yy)\.?[\s:]*)?(?<![0-9/])(?:0[1-9]|1[0-2])\s?[/\-.]\s?(?:20)?[0-9]{2}(?![0-9/])"
)
_CVV = re.compile(
    r"(?i)(\b(?:cvv2?|cvc2?|csc|cid|cav2?|security code|sicherheitscode|prüfnummer|kartenprüfnummer|"
    r"cryptogramme|código de seguridad|codice di sicurezza|código de segurança)\b[\s:#.]*)"
    r"([0-9]{3,4})(?![0-9])"
)
_CVV_AFTER_EXPIRY = re.compile(r"(\[EXPIRY\][ ,;/]*)([0-9]{3,4})(?![0-9])")


def _card_details(text: str, counts: Counter[str]) -> str:
    """The expiry date and security code written within 80 characters after a card number."""

    def expiry(m: re.Match[str]) -> str:
        counts["redacted card expiry/cvv"] += 1
        keyword = re.match(r"(?i)[^0-9]*", m.group(0))
        return (keyword.group(0) if keyword else "") + "[EXPIRY]"

    def cvv(m: re.Match[str]) -> str:
        counts["redacted card expiry/cvv"] += 1
        return m.group(1) + "[CVV]"

    out: list[str] = []
    pos = 0
    while (found := text.find("[CARD]", pos)) >= 0:
        start = found + len("[CARD]")
        end = min(len(text), start + 80)
        newline = text.find("\n", start, end)
        end = end if newline < 0 else newline
        window = _EXPIRY.sub(expiry, text[start:end])
        window = _CVV_AFTER_EXPIRY.sub(cvv, _CVV.sub(cvv, window))
        out += [text[pos:start], window]
        pos = end
    out.append(text[pos:])
    return "".join(out)


# ------------------------------------------------------------------------------- driver

# What `_once` needs to change a text at all: a digit (IP, IBAN, card, address, phone), "@" (e-mail,
# URL credentials), "=" (URL parameters, keyword values), a run of 16 characters without a space
# (tokens, keyword values: `_LONG_RUN`), a private key, or a password hint with the ":" or "=" its
# pattern needs. Most messages have none and skip every rule (issue 18). `_CANDIDATE` finds the first
# three in one pass, a space-separated run at a time: it skips (possessively, never backtracking) the
# runs shorter than 16 without a digit, "@" or "=", and matches at the first other one.
_CANDIDATE = re.compile(r"\s*+(?:[^\s0-9@=]{1,15}+\s++)*+(?:\S{16}|[^\s0-9@=]*+[0-9@=])")


def _may_change(text: str) -> bool:
    """False when `_once(text, ...)` returns `text` whatever the kinds and region."""
    return (
        _CANDIDATE.match(text) is not None
        or "-----BEGIN" in text
        or (":" in text and _PASSWORD_HINTS.search(text.lower()) is not None)
    )


def _once(text: str, kinds: list[str], counts: Counter[str], region: str | None) -> str:
    if "secret" in kinds:
        text = _secrets(text, counts)
    if "email" in kinds and "@" in text:
        text = _EMAIL.sub(_counted("email", counts), text)
    digits = len(_DIGIT.findall(text))
    if not digits:
        return text
    if "ip" in kinds:
        text = ips(text, counts)
    # IBANs and cards have at least 8 digits (NL: 10, cards: 13), phone numbers 7: most messages skip.
    if digits >= 8 and "iban" in kinds:
        text = _ibans(text, counts)
    if digits >= 8 and "card" in kinds:
        text = _CARD.sub(lambda m: _card(m, counts), text)
    if "card" in kinds and "[CARD]" in text:
        text = _card_details(text, counts)
    if "address" in kinds:
        text = addresses(text, counts)
    if digits >= 7 and "phone" in kinds:
        text = phones(text, counts, region)
    return text


def _counted(kind: str, counts: Counter[str]) -> Callable[[re.Match[str]], str]:
    placeholder = f"[{kind.upper()}]"

    def replace(_: re.Match[str]) -> str:
        counts[f"redacted {kind}"] += 1
        return placeholder

    return replace


class Redactor:
    """`redact` with its settings resolved once: the phone region (from the locale for "auto") and the
    pseudonyms of `people` (twin.yaml's canonical name -> aliases) when they are asked for."""

    def __init__(self, config: RedactConfig, people: Mapping[str, Sequence[str]] | None = None) -> None:
        self.config = config
        self.kinds: list[str] = list(config.kinds)
        self.region = default_region() if config.region == "auto" else config.region
        self.pseudonyms = Pseudonyms(people) if config.pseudonymize_people and people else None

    def session(self, messages: list[Msg], counts: Counter[str], me: str) -> list[Msg]:
        """The messages of one session redacted, each but `me`'s where `except_me` is set: the build and
        the curate view redact a session so, once it is known to train someone (twinlm.prepare.build)."""
        if not self.config.enabled:
            return messages
        except_me = self.config.except_me
        new = tuple.__new__  # a Msg per message, without the named tuple's Python-level __new__ (issue 18)
        return [
            m
            if except_me and m.author == me
            else new(Msg, (m.author, self(m.text, counts), m.kind, m.timestamp_ms, m.role))
            for m in messages
        ]

    def __call__(self, text: str, counts: Counter[str]) -> str:
        """`text` with personal data replaced by typed placeholders; each replacement counted by kind.

        Rules run in a fixed order (secrets, e-mail, IP, IBAN, card, address, phone) and again until
        the text no longer changes: one replacement can free a neighbour that a boundary check held back.
        """
        if not self.config.enabled or not text:
            return text
        if _may_change(text):
            # Usually one pass, two where a replacement freed a neighbour; a run of n items that each
            # hold the next back ("Aastraat0Aastraat0...") takes n. The bound only guards against a rule
            # that would never settle: every changing pass replaces at least one character.
            for _ in range(len(text) + 1):
                redacted = _once(text, self.kinds, counts, self.region)
                if redacted == text:
                    break
                text = redacted
        if self.pseudonyms is not None:
            text = self.pseudonyms(text, counts)
        return text


def redact(text: str, config: RedactConfig, counts: Counter[str]) -> str:
    """`text` redacted with `config` (no pseudonyms: they need the people, see `Redactor`)."""
    return Redactor(config)(text, counts)


def redacted_kinds(counts: Mapping[str, int]) -> dict[str, int]:
    """What was redacted, per kind ("phone": 3, ...), from a build's counts; every kind listed."""
    found = {kind: counts.get(f"redacted {kind}", 0) for kind in KINDS}
    found["card expiry/cvv"] = counts.get("redacted card expiry/cvv", 0)
    found["pseudonymised name"] = counts.get("pseudonymised name", 0)
    return found
