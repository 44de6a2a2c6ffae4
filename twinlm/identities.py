"""One person, many names: map each account (source, author id) to `me`, a person, or nobody.

An account is resolved as a whole, from every name it has used (the corpus keeps them all: a
Discord nickname per server and the username beside it, the name before a rename), so the same
account is never split into two speakers and `twinlm people` agrees with the build.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports the build settings, which import this module
    from twinlm.config import TwinConfig

ME = "me"

Account = tuple[str, str]  # (source, author id)
Resolver = Callable[[str, str, str], str | None]

# How an account became `me` without an alias.
OWNER = "made the export"
CHATGPT_USER = "ChatGPT's user"


class Identities:
    """Who each account is, from the aliases in twin.yaml and the names each account has used.

    An alias matches an account written "source:id" (e.g. "discord:1234"), its author id, or any
    name the account has used on any platform, case-insensitively. Without an alias, the accounts
    that made the exports (`owners`, e.g. Telegram's exporter) and the user of a ChatGPT export are
    you. `names`: every name of each account, the latest display name first (corpus.queries.account_names).
    """

    def __init__(
        self,
        config: TwinConfig,
        owners: frozenset[Account] = frozenset(),
        names: Mapping[Account, Sequence[str]] | None = None,
    ) -> None:
        self._owner: dict[str, tuple[str, str]] = {}  # casefolded alias -> (person, alias as written)
        for person, aliases in config.people.items():
            for alias in [person, *aliases]:
                self._owner[alias.casefold()] = (person, alias)
        for alias in config.me:
            self._owner[alias.casefold()] = (ME, alias)
        self.owners = owners
        self.names: dict[Account, tuple[str, ...]] = {k: tuple(v) for k, v in (names or {}).items()}
        self._cache: dict[tuple[str, str, str], tuple[str | None, str | None]] = {}

    def match(self, source: str, author_id: str, author_name: str = "") -> tuple[str | None, str | None]:
        """(person, why): "me" | a canonical name | None, and the alias (as written) that matched it,
        or OWNER / CHATGPT_USER. An account's own key, then its id, then its names, latest first."""
        known = self.names.get((source, author_id))
        key = (source, author_id, "" if known else author_name)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._match(source, author_id, known or (author_name,))
        return found

    def _match(self, source: str, author_id: str, names: Iterable[str]) -> tuple[str | None, str | None]:
        for candidate in (f"{source}:{author_id}", author_id, *names):
            hit = self._owner.get(candidate.casefold())
            if hit:
                return hit
        if (source, author_id) in self.owners:
            return ME, OWNER
        if source == "chatgpt" and author_id == "user":
            return ME, CHATGPT_USER
        return None, None

    def resolve(self, source: str, author_id: str, author_name: str) -> str | None:
        """ "me" | a person's canonical name | None when the account is not mapped yet."""
        return self.match(source, author_id, author_name)[0]

    def speaker(self, source: str, author_id: str, author_name: str) -> str:
        """The one name the build gives the account: its person, else its latest display name."""
        person = self.match(source, author_id, author_name)[0]
        if person is not None:
            return person
        known = self.names.get((source, author_id))
        return known[0] if known else author_name

    def persons(self, source: str, author_id: str) -> list[tuple[str, str]]:
        """Every (person, alias) that one of the account's keys or names matches: more than one is a
        conflict (the first wins), which `people` reports."""
        names = self.names.get((source, author_id), ())
        found: list[tuple[str, str]] = []
        for candidate in (f"{source}:{author_id}", author_id, *names):
            hit = self._owner.get(candidate.casefold())
            if hit and hit[0] not in {person for person, _ in found}:
                found.append(hit)
        return found

    def person_of(self, alias: str) -> str | None:
        """The person an alias of twin.yaml stands for."""
        hit = self._owner.get(alias.casefold())
        return hit[0] if hit else None

    def alias_matches(self) -> dict[str, list[Account]]:
        """Each alias of twin.yaml (as written) -> the accounts it matched, in `names` order."""
        matched: dict[str, list[Account]] = {alias: [] for _, alias in self._owner.values()}
        for (source, author_id), names in self.names.items():
            seen: set[str] = set()
            for candidate in (f"{source}:{author_id}", author_id, *names):
                hit = self._owner.get(candidate.casefold())
                if hit and hit[1] not in seen:
                    seen.add(hit[1])
                    matched[hit[1]].append((source, author_id))
        return matched

    def targets(self, name: str) -> set[str]:
        """The speakers (as `speaker` names them) that a target name means: a person's alias means that
        person, "me" means you, any name an account has used means that account's speaker."""
        folded = name.casefold()
        hit = self._owner.get(folded)
        if hit:
            return {hit[0]}
        if folded == ME:
            return {ME}
        found = {
            self.speaker(source, author_id, names[0])
            for (source, author_id), names in self.names.items()
            if any(n.casefold() == folded for n in names)
        }
        return found or {name}


def resolver(
    config: TwinConfig,
    owners: frozenset[Account] = frozenset(),
    names: Mapping[Account, Sequence[str]] | None = None,
) -> Resolver:
    """A function (source, author_id, author_name) -> "me" | a person's canonical name | None."""
    return Identities(config, owners, names).resolve
