"""One person, many names: map each (source, author id, display name) to `me`, a person, or nobody."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only the type: config imports prepare's settings (a higher layer than this one)
    from twinlm.config import TwinConfig

ME = "me"

Resolver = Callable[[str, str, str], str | None]


def resolver(config: TwinConfig, owners: frozenset[tuple[str, str]] = frozenset()) -> Resolver:
    """A function (source, author_id, author_name) -> "me" | a person's canonical name | None.

    An alias matches a display name or an author id (case-insensitive), or exactly one account when
    written "source:id" (e.g. "discord:1234"). Without an alias, the accounts that made the exports
    (`owners`: (source, author_id) pairs, e.g. Telegram's exporter) and the user of a ChatGPT
    export are you.
    """
    owner: dict[str, str] = {}
    for person, aliases in config.people.items():
        for alias in [person, *aliases]:
            owner[alias.casefold()] = person
    for alias in config.me:
        owner[alias.casefold()] = ME

    def resolve(source: str, author_id: str, author_name: str) -> str | None:
        for key in (f"{source}:{author_id}", author_id, author_name):
            found = owner.get(key.casefold())
            if found:
                return found
        if (source, author_id) in owners or (source == "chatgpt" and author_id == "user"):
            return ME
        return None

    return resolve
