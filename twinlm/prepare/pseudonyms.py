"""Consistent pseudonyms for other people's names in message text (`build.redact.pseudonymize_people`).

The names come from `people:` in twin.yaml: each canonical name and its aliases, and the parts of
a full name ("Alice" of "Alice Smith"), that look like a name (letters, not an e-mail, an id or a
phone number). Each person gets one pseudonym, the same in every message and every build: it is
picked by a hash of the canonical name from a fixed list, and people are placed in a stable order
so that no two share one. Matching is by whole word and case-sensitive for capitalised names, so
"Will" is replaced and "will" is not.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence

# Short, common, and spread over several languages, so a pseudonym reads like a name in any chat.
PSEUDONYMS = (
    "Alex Sam Robin Kim Jamie Charlie Taylor Jordan Casey Morgan Riley Avery Quinn Rowan Sasha Noa "
    "Luca Mika Nico Andrea Dana Eli Remy Toni Yuki Kai Ari Emery Finley Hayden Jesse Kendall Lee "
    "Milan Oakley Parker Reese Sage Shay Skyler Sol Tatum Val Wren Ash Blair Cameron Drew Elliot "
    "Frankie Gale Harper Indy Jody Kris Lane Marlo Nat Ollie Pat Ray Sandy Terry Uma Vic Winter Zola"
).split()

_NAMEISH = re.compile(r"^[^\W\d_][\w'’.-]*(?: [^\W\d_][\w'’.-]*)*$")


def _name_forms(name: str) -> list[str]:
    """The written forms of `name` worth replacing: the whole name and its capitalised parts."""
    name = name.strip()
    if not _NAMEISH.match(name) or len(name) < 2:
        return []
    forms = [name]
    parts = name.split()
    if len(parts) > 1:
        forms += [p for p in parts if len(p) >= 3 and p[0].isupper() and not p.endswith(".")]
    return forms


class Pseudonyms:
    """Replaces the names of `people` (canonical name -> aliases) with one pseudonym per person."""

    def __init__(self, people: Mapping[str, Sequence[str]]) -> None:
        # A pseudonym is never somebody's real name, or a second pass would rename them again.
        taken = {
            form for person in people for alias in [person, *people[person]] for form in _name_forms(alias)
        }
        self.of: dict[str, str] = {}  # written form -> pseudonym
        for person in sorted(people, key=lambda p: hashlib.sha256(p.encode()).hexdigest()):
            digest = int(hashlib.sha256(person.encode()).hexdigest(), 16)
            pseudonym = PSEUDONYMS[digest % len(PSEUDONYMS)]
            step = 0
            while pseudonym in taken:  # more people than names: number the later ones
                step += 1
                base = PSEUDONYMS[(digest + step) % len(PSEUDONYMS)]
                pseudonym = base if step < len(PSEUDONYMS) else f"{base} {step // len(PSEUDONYMS) + 1}"
            taken.add(pseudonym)
            for alias in [person, *people[person]]:
                for form in _name_forms(alias):
                    self.of.setdefault(form, pseudonym)
        forms = sorted(self.of, key=len, reverse=True)  # "Alice Smith" before "Alice"
        self._pattern = (
            re.compile(r"(?<![\w@])(?:" + "|".join(map(re.escape, forms)) + r")(?![\w@])") if forms else None
        )

    def __call__(self, text: str, counts: Counter[str]) -> str:
        if self._pattern is None or self._pattern.search(text) is None:  # most texts name nobody
            return text

        def replace(m: re.Match[str]) -> str:
            counts["pseudonymised name"] += 1
            return self.of[m.group(0)]

        return self._pattern.sub(replace, text)
