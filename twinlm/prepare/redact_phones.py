"""Phone numbers and IP addresses for `twinlm.prepare.redact`.

Phone numbers: a cheap regex finds runs of at least 7 digits with the separators people write
(spaces, dots, dashes, slashes, brackets); Google's `phonenumbers` metadata then decides. Validity
alone is no test (German and Austrian numbers have so many lengths that almost any digit run is
"valid" there), so a candidate must also be written the way numbers are written:

- with a country code (+49 ..., 0049 ...): a possible number for that country;
- after a keyword ("tel:", "call me at", "Handy", "portable", "celular", ...): 7 to 15 digits;
- with a national trunk 0 (0171 1234567, 020 7946 0958, 06 12 34 56 78): valid in a region that
  dials 0 first;
- in a grouping of a region without a trunk prefix, valid there: North America (415) 555-2671,
  Spain 612 34 56 78, Portugal 912 345 678, Italian mobiles 333 1234567, Brazil (11) 91234-5678,
  India 98765 43210;
- or valid in the user's own region (`redact.region`), however grouped, when that region dials no
  trunk prefix (so "4155552671" is a phone number for a user in the US).

Never: a date, a time, an amount with zero groups ("700 000 000"), or a run after "order", "#",
"invoice" and other words that introduce reference numbers.

IP addresses: dotted quads and IPv6 forms that `ipaddress` accepts, except version-like quads
(v1.2.3.4, every part one digit) and short colon forms that read as times.
"""

from __future__ import annotations

import ipaddress
import locale
import os
import re
from collections import Counter
from functools import lru_cache

import phonenumbers

# Regions tried for national numbers, after the user's own; their numbers are in the test set.
_TRUNK_REGIONS = ("GB", "DE", "FR", "NL", "IT", "AT", "CH", "BE", "IN", "IE", "AU", "BR")
_NO_TRUNK_REGIONS = frozenset({"US", "CA", "ES", "PT", "IT", "BR", "IN", "DK", "NO", "GR", "LU"})

_PHONE_CANDIDATE = re.compile(
    r"(?<![\w+#/.%$€£-])(?<![0-9][ .,:\-/])"
    r"(?:(?:\+|00)[1-9][0-9]{0,3}[ .\-/]?(?:\(0\)[ ]?)?)?"
    # Possessive digit runs: a long run of digits can be split into groups only one way (else the
    # engine tries every split of "1" * 200 before giving up).
    r"(?:\([0-9]{1,5}\)[ ]?|[0-9]++)"
    r"(?:(?:[ .\-/]| / )?(?:\([0-9]{1,5}\)[ ]?|[0-9]++)){0,7}"
    r"(?![0-9])(?![.,][0-9])(?![ .\-/]?[0-9])(?!\s?(?:%|€|\$|£|₹|R\$|km|kg|mb|gb|ms|px|x\b))"
)
_KEYWORD = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|text me|ring me|reach me|number|whatsapp|sms|"
    r"handy|telefon|telefonnummer|handynummer|nummer|ruf|anrufen|numéro|téléphone|portable|appelle|"
    r"móvil|movil|teléfono|telefono|llama|llámame|cellulare|chiama|chiamami|celular|ligue|liga|zap|"
    r"telemóvel|bel|mobiel|telefoonnummer|mob|ph|contact)\b[^0-9\n]{0,14}$"
)
# Words that introduce a reference number, not a phone number (checked in the text just before).
_NOT_A_PHONE = re.compile(
    r"(?i)(?:#|\bn[º°o]\.|\bnr\.?|\b(?:order|orders|invoice|ref|reference|id|num|ticket|tracking|account|acct|"
    r"customer|isbn|issn|sku|serial|case|booking|confirmation|transaction|bestellung|bestellnummer|"
    r"rechnung|kundennummer|auftrag|commande|facture|pedido|factura|ordine|fattura|bestelling|"
    r"factuur|protocolo|pid|pr|issue|build|version|ver|v)\b)[^0-9\n]{0,12}$"
)
_DATE = re.compile(
    r"(?<![0-9])(?:[0-3]?[0-9][./-][0-3]?[0-9][./-](?:19|20)[0-9]{2}"
    r"|(?:19|20)[0-9]{2}[./-][01]?[0-9][./-][0-3]?[0-9])(?![0-9])"
)
_YEAR_RANGE = re.compile(r"^(?:19|20)[0-9]{2}\s?[-/]\s?(?:19|20)[0-9]{2}$")
_GROUP = re.compile(r"[0-9]+")
_NANP = re.compile(r"(?:1[ .\-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .\-/])[0-9]{3}[ .\-][0-9]{4}")
# (first digits, digit group lengths, region): how numbers without a trunk prefix are written.
_SHAPES: tuple[tuple[str, tuple[tuple[int, ...], ...], str], ...] = (
    ("6789", ((3, 2, 2, 2), (3, 3, 3), (2, 3, 2, 2), (9,)), "ES"),
    ("29", ((3, 3, 3),), "PT"),
    ("3", ((3, 7), (3, 3, 4), (3, 4, 3), (3, 6), (10,)), "IT"),
    ("123456789", ((2, 5, 4), (2, 4, 4), (2, 9), (2, 8)), "BR"),
    ("6789", ((5, 5), (3, 3, 4), (4, 3, 3)), "IN"),
)


def default_region() -> str | None:
    """The region of the user's locale (LC_ALL, LC_MESSAGES, LANG: "en_US.UTF-8" -> "US"), else None."""
    for value in (os.environ.get("LC_ALL"), os.environ.get("LC_MESSAGES"), os.environ.get("LANG")):
        if value:
            return _region_of(value)
    try:
        return _region_of(locale.getlocale()[0] or "")
    except ValueError:
        return None


def _region_of(name: str) -> str | None:
    match = re.match(r"[a-zA-Z]{2,3}[_-]([A-Za-z]{2})\b", name)
    if not match:
        return None
    region = match.group(1).upper()
    return region if region in phonenumbers.SUPPORTED_REGIONS else None


@lru_cache(maxsize=4096)
def _valid_in(candidate: str, region: str) -> bool:
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def _international(candidate: str) -> bool:
    text = "+" + candidate[2:] if candidate.startswith("00") else candidate
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_possible_number(number) and len(str(number.national_number)) >= 6


def is_phone(candidate: str, before: str, region: str | None) -> bool:
    """Whether `candidate` (as the candidate regex found it) is a phone number, given the text before it."""
    digits = "".join(_GROUP.findall(candidate))
    if _DATE.search(candidate) or _YEAR_RANGE.match(candidate) or _NOT_A_PHONE.search(before):
        return False
    if candidate.startswith(("+", "00")):
        return 8 <= len(digits) <= 17 and _international(candidate)
    if _KEYWORD.search(before):
        return 7 <= len(digits) <= 15
    if not 9 <= len(digits) <= 13:
        return False
    groups = [g for g in _GROUP.findall(candidate)]
    if any(len(g) >= 3 and set(g) == {"0"} for g in groups[1:]):
        return False  # "700 000 000": an amount
    if digits[0] == "0":
        regions = ([region] if region else []) + [r for r in _TRUNK_REGIONS if r != region]
        return any(_valid_in(candidate, r) for r in regions)
    if region in _NO_TRUNK_REGIONS and _valid_in(candidate, region):
        return True
    if len(groups) > 1 and _NANP.fullmatch(candidate):
        return True  # (555) 123-4567: NANP shape, 555 numbers included (they are valid to dial)
    lengths = tuple(map(len, groups))
    return any(
        digits[0] in first
        and lengths in shapes
        and (len(groups) > 1 or region == shape_region)
        and _valid_in(candidate, shape_region)
        for first, shapes, shape_region in _SHAPES
    )


def phones(text: str, counts: Counter[str], region: str | None) -> str:
    parts: list[str] = []
    done = 0
    for match in _PHONE_CANDIDATE.finditer(text):
        start, end = match.span()
        if sum(c.isdigit() for c in match.group(0)) < 7:
            continue
        span = _phone_within(text, start, end, region)
        if span is None:
            continue
        parts += [text[done : span[0]], "[PHONE]"]
        counts["redacted phone"] += 1
        done = span[1]
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def _phone_within(text: str, start: int, end: int, region: str | None) -> tuple[int, int] | None:
    """The candidate itself, or it less a leading or trailing group ("at 5 0171 1234567", "... 2x")."""
    candidate = text[start:end]
    if is_phone(candidate, text[max(0, start - 40) : start], region):
        return start, end
    seps = [m.end() for m in re.finditer(r"[ ](?=[0-9(+])", candidate)]
    if seps:
        first = start + seps[0]
        if is_phone(text[first:end], text[max(0, first - 40) : first], region):
            return first, end
        last = start + seps[-1] - 1
        if is_phone(text[start:last], text[max(0, start - 40) : start], region):
            return start, last
    return None


# ------------------------------------------------------------------------------- IP addresses

_IPV4 = re.compile(r"(?<![\w.:])(?<![vV])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![\w]|\.[0-9])")
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:)(?:[0-9A-Fa-f]{1,4}|:)(?::[0-9A-Fa-f]{0,4}){2,7}"
    r"(?:(?<=:)(?:[0-9]{1,3}\.){3}[0-9]{1,3})?(?:/[0-9]{1,3})?(?![\w:])"
)
_VERSION_WORD = re.compile(
    r"(?i)\b(?:version|ver|release|v|build|python|node|chrome|firefox|ios|android)\s*$"
)


def ips(text: str, counts: Counter[str]) -> str:
    def v4(m: re.Match[str]) -> str:
        value = m.group(0)
        parts = value.split(".")
        if any(len(p) > 1 and p[0] == "0" for p in parts) or all(len(p) == 1 for p in parts):
            return value  # 1.2.3.4 reads as a version; 01.02.03.04 as a date or a code
        if _VERSION_WORD.search(text[max(0, m.start() - 12) : m.start()]):
            return value
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return value
        counts["redacted ip"] += 1
        return "[IP]"

    def v6(m: re.Match[str]) -> str:
        value = m.group(0)
        address = value.split("/")[0]
        groups = [g for g in re.split(r"[:.]", address) if g]
        # "12:30:45" is a time (and no valid IPv6); "a::b" a C++ scope more often than an address.
        if len(groups) < 3 and not any(len(g) >= 3 for g in groups):
            return value
        if all(g.isdigit() and len(g) <= 2 for g in groups):
            return value
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return value
        counts["redacted ip"] += 1
        return "[IP]"

    if "." in text:
        text = _IPV4.sub(v4, text)
    if "::" in text or text.count(":") >= 5:
        text = _IPV6.sub(v6, text)
    return text
