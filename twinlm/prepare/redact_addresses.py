"""Street addresses for `twinlm.prepare.redact`: a house number next to a street word, with the unit,
postcode and city where they follow, in English (US, UK, India), German, French, Spanish, Italian,
Dutch and Portuguese (Portugal, Brazil). Street names must be capitalised, so "5 miles down the road"
or "3 rues" stay as they are.

Each language's pattern runs only when one of its street words occurs (most messages name no street),
and opens with the character class it needs so the regex engine can skip ahead.
"""

from __future__ import annotations

import re
from collections import Counter


def _hints(words: str) -> re.Pattern[str]:
    return re.compile("|".join(map(re.escape, words.split("|"))))


_UK_POSTCODE = r"[A-Z]{1,2}[0-9][A-Z0-9]?[ \t]?[0-9][A-Z]{2}(?![\w])"
_CITY_WORD = r"[A-ZÄÖÜÉÁÍÓÚÂÊÔÃÕ][\wäöüßéèáíóúâêôãõç'-]+"
_CITY = rf"{_CITY_WORD}(?:[ \t]+(?:d[aeo]s?[ \t]+)?{_CITY_WORD}){{0,2}}"
# After a street: "10115 Berlin", "SW1A 1AA London", "London NW1 6XE", "1017 GC Amsterdam",
# "Bengaluru 560001" / "Mumbai - 400001", "São Paulo - SP, 01310-100", "Springfield, IL 62704".
_CITY_TAIL = (
    r"(?:,?[ \t]*(?:apto?\.?|apartamento|ap\.|bloco|sala|conj\.?|piso|planta|puerta|interno|int\.|scala|"
    r"esc\.?|etage|étage|bus|app\.?)[ \t]*[0-9]{1,4}[A-Za-z]?"
    r"|,?[ \t]*[0-9]{1,2}[º°ª][ \t]?(?:[A-Za-z](?![\w])|izda\.?|dcha\.?|izq\.?)?)*"
    rf"(?:,?[ \t]+(?:[0-9]{{4,5}}(?:-[0-9]{{3}})?|[0-9]{{4}}[ \t]?[A-Z]{{2}}|{_UK_POSTCODE})[ \t]+{_CITY}"
    rf"|,[ \t]*{_CITY},?[ \t]+(?:{_UK_POSTCODE}|[A-Z]{{2}}[ \t]+[0-9]{{5}}(?:-[0-9]{{4}})?)"
    rf"|(?:,[ \t]*{_CITY})?,?[ \t]+{_CITY}(?:[ \t]*-)?[ \t]+[0-9]{{6}}(?![0-9])"
    rf"|,?[ \t]+{_CITY}[ \t]+-[ \t]+[A-Z]{{2}}(?:,?[ \t]+(?:CEP[ \t]*)?[0-9]{{5}}-?[0-9]{{3}})?"
    rf"|,?[ \t]+(?:CEP[ \t]*)?[0-9]{{5}}-[0-9]{{3}}(?:,?[ \t]+{_CITY})?)?"
)
_DE_NAME = r"[A-ZÄÖÜ][a-zäöüß]*(?:-[A-ZÄÖÜ][a-zäöüß]*)*"
_DE_STREET = r"(?:Straße|Strasse|Str\.|Weg|Gasse|Allee|Platz|Ring|Damm|Ufer|Chaussee|Markt)"
# "Berliner Straße 5" is a street, "Der Platz 1" is not: words ending in -er that are no place name.
_DE_NOT_A_NAME = (
    r"(?!(?:Der|Aber|Oder|Über|Unter|Hinter|Wieder|Immer|Jeder|Euer|Unser|Ihrer|Seiner|Meiner|Deiner|"
    r"Erster|Zweiter|Dritter|Letzter|Nächster|Neuer|Schöner|Guter|Weiter)\b)"
)
_EN_UNIT = (
    r"(?:Apt|Apartment|Suite|Ste|Unit|Flat|Room|Floor|Fl)\.?[ \t]*#?[0-9]+[A-Za-z]?|#[ \t]?[0-9]+[A-Za-z]?"
)
_EN_NAME = r"(?:[0-9]{1,3}(?:st|nd|rd|th)|[A-Z][A-Za-z'.]*|[A-Z]{2,4})"
_EN_ADDRESS = re.compile(
    # Flat 2, 221B Baker Street, London NW1 6XE; 12 North Oak Ave., Apt 4, Springfield, IL 62704;
    # 12, MG Road, Bengaluru 560001
    rf"(?:(?<![\w#])(?:{_EN_UNIT}),?[ \t]+)?"
    r"(?:(?<![\w-])[A-Z]{1,2}-)?"  # B-12, 3rd Cross Road
    r"[0-9](?<![\w.,/][0-9])(?<![0-9]-[0-9])[0-9]{0,4}[A-Za-z]?(?:-[0-9]{1,4})?,?[ \t]+"
    r"(?:(?:North|South|East|West|[NSEW]\.?)[ \t]+)?"
    rf"(?!The\b)(?:{_EN_NAME}[ \t]+){{1,3}}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|"
    r"Court|Ct|Place|Pl|Terrace|Way|Close|Crescent|Square|Sq|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Trail|"
    r"Gardens|Grove|Mews|Row|Loop|Alley|Plaza|Walk|Marg|Nagar|Salai)\b\.?"
    r"(?:[ \t]+(?:N|S|E|W|NE|NW|SE|SW)\b\.?)?"
    rf"(?:,?[ \t]*(?:{_EN_UNIT}))?" + _CITY_TAIL
)
_EN_HINTS = _hints(
    "St|Av|Road|Rd|Bl|Lane|Ln|Dr|Court|Ct|Pl|Terrace|Way|Close|Crescent|Sq|Parkway|Pkwy|Highway|Hwy|Cir|"
    "Trail|Gardens|Grove|Mews|Row|Loop|Alley|Plaza|Walk|Marg|Nagar|Salai"
)
_FR_ADDRESS = re.compile(
    # 12 rue de la Paix, 5 bis, avenue Victor Hugo, 75002 Paris
    r"[0-9](?<![\w.,/-][0-9])[0-9]{0,3}(?:[ \t]?(?:bis|ter))?,?[ \t]+(?i:rue|avenue|av\.|boulevard|bd|place|"
    r"chemin|allée|impasse|quai|route|cours|passage|square|rampe)[ \t]+"
    r"(?:(?:de[ \t]+la|du|des|de|d'|de[ \t]+l')[ \t]*)?[A-ZÉÈÀÂ][\w'-]+(?:[ \t]+[A-ZÉÈÀÂ][\w'-]+){0,3}"
    + _CITY_TAIL
)
_FR_HINTS = _hints("rue|av|boulevard|bd|place|chemin|allée|impasse|quai|route|cours|passage|square|rampe")
_DE_ADDRESS = re.compile(
    # Hauptstraße 5, Berliner Str. 12a, Karl-Marx-Allee 3, 10115 Berlin
    rf"(?<![\w-])(?:{_DE_NAME}(?:straße|strasse|str\.|weg|gasse|allee|platz|ring|damm|ufer|chaussee|steig|pfad)"
    rf"|{_DE_NAME}-{_DE_STREET}"  # Karl-Marx-Allee
    rf"|{_DE_NOT_A_NAME}[A-ZÄÖÜ][a-zäöüß]*er {_DE_STREET})"  # Berliner Straße
    r"[ \t]?[0-9]{1,4}(?:[ \t]?[a-zA-Z](?![\w]))?(?![0-9])"
    r"(?![ \t]*(?i:min|minuten|km|m|h|std|stunden|mal|uhr|%|€|euro|jahre|tage|leute|personen)\b)"
    + _CITY_TAIL
    + rf"|(?<![\w-])(?:Am|An der|Auf dem|Im|In der|Zum|Zur|Unter den)[ \t]+{_DE_NAME}[ \t]?[0-9]{{1,3}}[a-z]?"
    r",?[ \t]+[0-9]{5}[ \t]+" + _CITY
)
_DE_HINTS = _hints("str|weg|gasse|allee|platz|ring|damm|ufer|chaussee|steig|pfad|markt|am |an der|im |zu")
_NL_ADDRESS = re.compile(
    # Kerkstraat 12, Prinsengracht 263-267, Laan van Meerdervoort 10, 1017 GC Amsterdam
    r"(?<![\w-])(?:(?:Van|Von|De|Den|Sint|St\.)[ \t]+)?[A-Z][a-z]+(?:-[A-Z][a-z]+)*"
    r"(?:straat|laan|plein|gracht|kade|singel|dijk|dreef|steeg|hof|markt|park|pad|weg)"
    r"[ \t]?[0-9]{1,4}(?:[ \t]?-?[a-zA-Z](?![\w])|-[0-9]{1,4}|[ \t]?(?:hs|bis))?(?![0-9])"
    r"(?![ \t]*(?i:min|minuten|km|m|uur|keer|%|€|euro|jaar)\b)"
    + _CITY_TAIL
    + r"|(?<![\w-])(?:Laan|Plein|Kade)[ \t]+van[ \t]+(?:de[ \t]+|der[ \t]+)?[A-Z][a-z]+[ \t]+[0-9]{1,4}"
    r"[a-zA-Z]?(?![0-9])" + _CITY_TAIL
)
_NL_HINTS = _hints("straat|laan|plein|gracht|kade|singel|dijk|dreef|steeg|hof|markt|park|pad")
_ES_ADDRESS = re.compile(
    # Calle Mayor 5, Avenida de la Constitución, 12, C/ Alcalá nº 42, 3º B, 28013 Madrid
    r"(?<![\w/])(?i:calle|c/|avenida|avda\.?|paseo|plaza|pza\.|carrer|camino|ronda|travesía)[ \t]*"
    r"(?:(?:de[ \t]+(?:la[ \t]+|los[ \t]+|las[ \t]+)?|del[ \t]+))?[A-ZÁÉÍÓÚÑ][\wáéíóúñ]+"
    r"(?:[ \t]+(?:de[ \t]+|del[ \t]+)?[A-ZÁÉÍÓÚÑ][\wáéíóúñ]+){0,3},?[ \t]*"
    r"(?:n[º°o]\.?[ \t]*)?[0-9]{1,4}(?![0-9])" + _CITY_TAIL
)
_ES_HINTS = _hints("calle|c/|av|paseo|plaza|pza|carrer|camino|ronda|travesía")
_PT_ADDRESS = re.compile(
    # Rua Augusta, 274; Av. Paulista, 1578, apto 42, São Paulo - SP, 01310-100; Praça da Sé, 10
    r"(?<![\w/])(?:Rua|R\.|Avenida|Av\.|Travessa|Tv\.|Praça|Pç\.|Alameda|Al\.|Estrada|Rodovia|Largo|Beco)"
    r"[ \t]+(?:(?:d[aeo]s?)[ \t]+)?[A-ZÁÉÍÓÚÂÊÔÃÕ0-9][\wáéíóúâêôãõç.']*"
    r"(?:[ \t]+(?:d[aeo]s?[ \t]+)?[A-ZÁÉÍÓÚÂÊÔÃÕ][\wáéíóúâêôãõç.']*){0,4},?[ \t]*"
    r"(?:n[º°o]\.?[ \t]*)?[0-9]{1,5}(?![0-9])(?:[ \t]?-?[ \t]?[A-Z](?![\w]))?" + _CITY_TAIL
)
_PT_HINTS = _hints("Rua|R.|Av|Travessa|Tv.|Praça|Pç.|Alameda|Al.|Estrada|Rodovia|Largo|Beco")
_IT_ADDRESS = re.compile(
    # Via Roma 12, Piazza del Duomo, 1, Via G. Garibaldi 7/B, 00184 Roma
    r"(?<!\w)(?:Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Borgo|Lungarno|Lungotevere|Contrada)[ \t]+"
    r"(?:(?:di|del|della|dei|degli|delle|dello|San|Santa|[A-Z]\.)[ \t]*)*[A-Z][\wàèéìòù']+"
    r"(?:[ \t]+(?:[A-Z]\.[ \t]*)?[A-Z][\wàèéìòù']+){0,3},?[ \t]*(?:n\.[ \t]*)?[0-9]{1,4}"
    r"(?:/[A-Za-z0-9])?(?![0-9])" + _CITY_TAIL
)
_IT_HINTS = _hints("Via|Viale|Piazza|Corso|Largo|Vicolo|Borgo|Lungo|Contrada")

# A street without a street word ("Damrak 70", "99 Bishopsgate") only with its postcode and city.
_BARE_STREET = re.compile(
    r"(?<![\w-])[A-ZÄÖÜ][a-zäöüß]+(?:[ \t][A-ZÄÖÜ][a-zäöüß]+)?[ \t][0-9]{1,4}[a-z]?,[ \t]*"
    rf"(?:[0-9]{{4}}[ \t]?[A-Z]{{2}}|[0-9]{{5}})[ \t]+{_CITY}"
    rf"|[0-9](?<![\w.,/-][0-9])[0-9]{{0,3}}[ \t]+[A-Z][a-z]+(?:[ \t][A-Z][a-z]+)?,[ \t]*{_CITY}"
    rf"[ \t]+{_UK_POSTCODE}"
)
_BARE_HINTS = _hints(",")

_RULES = (
    (_EN_HINTS, False, _EN_ADDRESS),
    (_FR_HINTS, True, _FR_ADDRESS),
    (_DE_HINTS, True, _DE_ADDRESS),
    (_NL_HINTS, True, _NL_ADDRESS),
    (_ES_HINTS, True, _ES_ADDRESS),
    (_PT_HINTS, False, _PT_ADDRESS),
    (_IT_HINTS, False, _IT_ADDRESS),
    (_BARE_HINTS, False, _BARE_STREET),
)


def addresses(text: str, counts: Counter[str]) -> str:
    def replace(m: re.Match[str]) -> str:
        counts["redacted address"] += 1
        return "[ADDRESS]"

    lowered = text.lower()
    for hints, on_lowered, pattern in _RULES:
        if hints.search(lowered if on_lowered else text):
            text = pattern.sub(replace, text)
    return text
