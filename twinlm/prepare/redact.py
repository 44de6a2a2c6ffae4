"""Redaction of personal data: e-mails, phone numbers, card and IBAN numbers, secrets, street addresses.

Each match becomes a typed placeholder ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]", "[SECRET]",
"[ADDRESS]") and is counted ("redacted email", ...). Precision matters as much as recall: a model
trained on text where every date, version or price became "[PHONE]" learns nonsense, so

- card numbers must pass the Luhn check, with an issuer prefix that allows their length (13-19);
- IBANs must have their country's length and pass the ISO 7064 mod-97 check;
- phone numbers need an international prefix (+49, 0049), a national trunk 0, a North American
  or Spanish/Italian grouping with separators, or a keyword ("tel:", "call me at"); 9-15 digits,
  never a date, a time, a version or a digit run that continues into more digits;
- secrets are known token shapes (OpenAI, GitHub, Slack, AWS, Google, Stripe, Hugging Face,
  Discord and Telegram bot tokens, JWTs, private keys, webhook URLs) or a long value after a
  keyword such as "api_key=" / "token:" / "password:" (a bare 40-hex git SHA is not a secret);
- addresses are a house number next to a street word in en/de/fr/es/it, with capitalised names.

`redact` runs the rules until nothing changes, so redacting twice gives the same text as once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RedactKind = Literal["email", "phone", "card", "iban", "secret", "address"]
KINDS: tuple[RedactKind, ...] = ("email", "phone", "card", "iban", "secret", "address")


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
        list(KINDS), description="What to redact: " + ", ".join(KINDS) + " (secrets are API keys and tokens)."
    )


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
# A long value after a key word: "api_key=...", "token: ...", '"client_secret": "..."'.
_KEYWORD_VALUE = re.compile(
    r"(?i)(\b[\w-]*?(?:token|api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?key|private[_-]?key|"
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


def _secrets(text: str, counts: Counter[str]) -> str:
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
    # Every token shape and every keyword value is at least 16 characters without a space.
    if max(map(len, text.split()), default=0) >= 16:
        text = _TOKEN.sub(whole, text)
        if _KEYWORD_HINTS.search(lowered):
            text = _KEYWORD_VALUE.sub(value_only, text)
    if _PASSWORD_HINTS.search(lowered):
        text = _PASSWORD.sub(password, text)
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(url_password, text)
    return text


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


def _iban_valid(compact: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, remainder mod 97 is 1."""
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ibans(text: str, counts: Counter[str]) -> str:
    """IBANs, written compact or in groups separated by single spaces, in upper or lower case."""
    parts: list[str] = []
    done = pos = 0  # text[:done] is in parts; the search resumes at pos
    while (m := _IBAN_START.search(text, pos)) is not None:
        start = m.start()
        length = _IBAN_LENGTHS.get(text[start : start + 2].upper())
        end = _iban_end(text, start, length) if length else None
        if end is None or not _iban_valid(text[start:end].replace(" ", "").upper()):
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
_CARD = re.compile(r"[0-9](?<![0-9]{2})(?<![0-9][ -][0-9])(?:[ -]?[0-9]){12,18}(?![ -]?[0-9])")


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


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
    if (" " in raw and "-" in raw) or not _card_shaped(digits) or not _luhn(digits):
        return raw
    counts["redacted card"] += 1
    return "[CARD]"


_PHONE = re.compile(
    r"(?<![\w+#])(?<![0-9][ .\-/])(?:"
    r"(?:\+|00)[1-9][0-9]{0,3}(?:[ .\-/]?\(?[0-9]{1,6}\)?){1,7}"  # international: +49 30 1234567
    r"|\(?0[1-9][0-9]{0,4}\)?(?:[ .\-/]?[0-9]{2,8}){1,4}"  # national with trunk 0: 0171 1234567
    r"|(?:1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}"  # (555) 123-4567
    r"|[6-9][0-9]{2}(?: [0-9]{2}){3}|[6-9][0-9]{2} [0-9]{3} [0-9]{3}"  # Spain: 612 34 56 78
    r"|3[0-9]{2} [0-9]{6,7}"  # Italian mobile: 333 1234567
    r")(?![0-9])(?![ .\-/]?[0-9])"
)
_PHONE_KEYWORD = re.compile(
    r"(?i)(\b(?:phone|tel|telephone|mobile|cell|call me(?: at| on)?|text me(?: at| on)?|my number(?: is)?|"
    r"whatsapp|handy|telefon|telefonnummer|handynummer|meine nummer|numéro|téléphone|portable|móvil|"
    r"movil|teléfono|telefono|cellulare)\b[\s:.#]*)(\+?[0-9][0-9 ()./-]{6,20}[0-9])(?![0-9])"
)
_PHONE_HINTS = _hints(
    "phone|tel|mobile|cell|call me|text me|number|whatsapp|handy|nummer|numéro|numero|número|portable|"
    "móvil|movil|fono"
)
_DATE = re.compile(
    r"(?<![0-9])(?:[0-3]?[0-9][./-][0-3]?[0-9][./-](?:19|20)[0-9]{2}"
    r"|(?:19|20)[0-9]{2}[./-][01]?[0-9][./-][0-3]?[0-9])(?![0-9])"
)
_ZERO_GROUP = re.compile(r"[ .-]000(?![0-9])")


def _phone_ok(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    if candidate.startswith("00"):
        digits -= 2
    if not 9 <= digits <= 15 or _DATE.search(candidate):
        return False
    # "700 000 000": an amount with space separators, not a number without a prefix.
    return candidate[0] in "+0(" or not _ZERO_GROUP.search(candidate)


def _phones(text: str, counts: Counter[str]) -> str:
    def keyword(m: re.Match[str]) -> str:
        if not _phone_ok(m.group(2)):
            return m.group(0)
        counts["redacted phone"] += 1
        return m.group(1) + "[PHONE]"

    def bare(m: re.Match[str]) -> str:
        if not _phone_ok(m.group(0)):
            return m.group(0)
        counts["redacted phone"] += 1
        return "[PHONE]"

    lowered = text.lower()
    if _PHONE_HINTS.search(lowered):
        text = _PHONE_KEYWORD.sub(keyword, text)
    return _PHONE.sub(bare, text)


# ------------------------------------------------------------------------------- addresses

_UK_POSTCODE = r"[A-Z]{1,2}[0-9][A-Z0-9]?[ \t]?[0-9][A-Z]{2}(?![\w])"
# After a street: "10115 Berlin", "SW1A 1AA London" or "London NW1 6XE".
_CITY_TAIL = (
    rf"(?:,?[ \t]+(?:[0-9]{{4,5}}|{_UK_POSTCODE})[ \t]+[A-ZÄÖÜÉ][\w-]+"
    rf"|,[ \t]*[A-Z][a-z]+[ \t]+{_UK_POSTCODE})?"
)
_DE_NAME = r"[A-ZÄÖÜ][a-zäöüß]*(?:-[A-ZÄÖÜ][a-zäöüß]*)*"
_DE_STREET = r"(?:Straße|Strasse|Str\.|Weg|Gasse|Allee|Platz|Ring|Damm|Ufer|Chaussee|Markt)"
# "Berliner Straße 5" is a street, "Der Platz 1" is not: words ending in -er that are no place name.
_DE_NOT_A_NAME = (
    r"(?!(?:Der|Aber|Oder|Über|Unter|Hinter|Wieder|Immer|Jeder|Euer|Unser|Ihrer|Seiner|Meiner|Deiner|"
    r"Erster|Zweiter|Dritter|Letzter|Nächster|Neuer|Schöner|Guter|Weiter)\b)"
)
# One pattern per language, each behind a cheap substring test: most messages name no street. Patterns
# open with the character class they need (the lookbehinds follow) so the regex engine can skip ahead.
_EN_ADDRESS = re.compile(
    # 221B Baker Street, 12 North Oak Ave., Apt 4, Springfield, IL 62704
    r"[0-9](?<![\w.,/-][0-9])[0-9]{0,4}[A-Za-z]?,?[ \t]+(?:(?:North|South|East|West|[NSEW]\.?)[ \t]+)?"
    r"(?!The\b)(?:[A-Z][a-z]+[ \t]+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|"
    r"Court|Ct|Place|Pl|Terrace|Way|Close|Crescent|Square|Sq|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Trail)\b\.?"
    r"(?:,?[ \t]*(?:Apt|Apartment|Suite|Unit|Flat)\.?[ \t]*#?[0-9]+[A-Za-z]?)?"
    r"(?:,[ \t]*[A-Z][a-z]+(?:[ \t][A-Z][a-z]+)?,?[ \t]+[A-Z]{2}[ \t]+[0-9]{5}(?:-[0-9]{4})?)?" + _CITY_TAIL
)
_EN_HINTS = _hints(
    "St|Av|Road|Rd|Bl|Lane|Ln|Dr|Court|Ct|Pl|Terrace|Way|Close|Crescent|Sq|Parkway|Pkwy|Highway|Hwy|Cir|Trail"
)
_FR_ADDRESS = re.compile(
    # 12 rue de la Paix, 5 bis, avenue Victor Hugo, 75002 Paris
    r"[0-9](?<![\w.,/-][0-9])[0-9]{0,3}(?:[ \t]?(?:bis|ter))?,?[ \t]+(?i:rue|avenue|av\.|boulevard|bd|place|"
    r"chemin|allée|impasse|quai|route|cours|passage|square)[ \t]+"
    r"(?:(?:de[ \t]+la|du|des|de|d'|de[ \t]+l')[ \t]*)?[A-ZÉÈÀÂ][\w'-]+(?:[ \t]+[A-ZÉÈÀÂ][\w'-]+){0,3}"
    + _CITY_TAIL
)
_FR_HINTS = _hints("rue|av|boulevard|bd|place|chemin|allée|impasse|quai|route|cours|passage|square")
_DE_ADDRESS = re.compile(
    # Hauptstraße 5, Berliner Str. 12a, Karl-Marx-Allee 3, 10115 Berlin
    rf"(?<![\w-])(?:{_DE_NAME}(?:straße|strasse|str\.|weg|gasse|allee|platz|ring|damm|ufer|chaussee|steig|pfad)"
    rf"|{_DE_NAME}-{_DE_STREET}"  # Karl-Marx-Allee
    rf"|{_DE_NOT_A_NAME}[A-ZÄÖÜ][a-zäöüß]*er {_DE_STREET})"  # Berliner Straße
    r"[ \t]?[0-9]{1,4}(?:[ \t]?[a-zA-Z](?![\w]))?(?![0-9])"
    r"(?![ \t]*(?i:min|minuten|km|m|h|std|stunden|mal|uhr|%|€|euro|jahre|tage|leute|personen)\b)" + _CITY_TAIL
)
_DE_HINTS = _hints("str|weg|gasse|allee|platz|ring|damm|ufer|chaussee|steig|pfad|markt")
_ES_ADDRESS = re.compile(
    # Calle Mayor 5, Avenida de la Constitución, 12, C/ Alcalá nº 42
    r"(?<![\w/])(?i:calle|c/|avenida|avda\.?|paseo|plaza|pza\.|carrer|camino|ronda|travesía)[ \t]*"
    r"(?:(?:de[ \t]+(?:la[ \t]+|los[ \t]+|las[ \t]+)?|del[ \t]+))?[A-ZÁÉÍÓÚÑ][\wáéíóúñ]+"
    r"(?:[ \t]+(?:de[ \t]+|del[ \t]+)?[A-ZÁÉÍÓÚÑ][\wáéíóúñ]+){0,3},?[ \t]*"
    r"(?:n[º°o]\.?[ \t]*)?[0-9]{1,4}(?![0-9])" + _CITY_TAIL
)
_ES_HINTS = _hints("calle|c/|av|paseo|plaza|pza|carrer|camino|ronda|travesía")
_IT_ADDRESS = re.compile(
    # Via Roma 12, Piazza del Duomo, 1, Via Garibaldi 7/B
    r"(?<!\w)(?:Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Borgo)[ \t]+"
    r"(?:(?:di|del|della|dei|degli|delle|dello|San|Santa)[ \t]+)?[A-Z][\wàèéìòù']+"
    r"(?:[ \t]+[A-Z][\wàèéìòù']+){0,3},?[ \t]*[0-9]{1,4}(?:/[A-Za-z0-9])?(?![0-9])" + _CITY_TAIL
)
_IT_HINTS = _hints("Via|Viale|Piazza|Corso|Largo|Vicolo|Borgo")


def _addresses(text: str, counts: Counter[str]) -> str:
    def replace(m: re.Match[str]) -> str:
        counts["redacted address"] += 1
        return "[ADDRESS]"

    lowered = text.lower()
    if _EN_HINTS.search(text):
        text = _EN_ADDRESS.sub(replace, text)
    if _FR_HINTS.search(lowered):
        text = _FR_ADDRESS.sub(replace, text)
    if _DE_HINTS.search(lowered):
        text = _DE_ADDRESS.sub(replace, text)
    if _ES_HINTS.search(lowered):
        text = _ES_ADDRESS.sub(replace, text)
    if _IT_HINTS.search(text):
        text = _IT_ADDRESS.sub(replace, text)
    return text


# ------------------------------------------------------------------------------- driver


def _once(text: str, kinds: list[str], counts: Counter[str]) -> str:
    if "secret" in kinds:
        text = _secrets(text, counts)
    if "email" in kinds and "@" in text:
        text = _EMAIL.sub(_counted("email", counts), text)
    digits = len(_DIGIT.findall(text))
    if not digits:
        return text
    # IBANs and cards have at least 8 digits (NL: 10, cards: 13), phone numbers 9: most messages skip.
    if digits >= 8 and "iban" in kinds:
        text = _ibans(text, counts)
    if digits >= 8 and "card" in kinds:
        text = _CARD.sub(lambda m: _card(m, counts), text)
    if "address" in kinds:
        text = _addresses(text, counts)
    if digits >= 9 and "phone" in kinds:
        text = _phones(text, counts)
    return text


def _counted(kind: str, counts: Counter[str]) -> Callable[[re.Match[str]], str]:
    placeholder = f"[{kind.upper()}]"

    def replace(_: re.Match[str]) -> str:
        counts[f"redacted {kind}"] += 1
        return placeholder

    return replace


def redact(text: str, config: RedactConfig, counts: Counter[str]) -> str:
    """`text` with personal data replaced by typed placeholders; each replacement counted by kind.

    Rules run in a fixed order (secrets, e-mail, IBAN, card, address, phone) and again until the text
    no longer changes: one replacement can free a neighbour that a boundary check held back.
    """
    if not config.enabled or not text:
        return text
    kinds: list[str] = list(config.kinds)
    for _ in range(4):
        redacted = _once(text, kinds, counts)
        if redacted == text:
            break
        text = redacted
    return text
