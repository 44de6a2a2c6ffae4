"""Read-only questions about the corpus: who speaks where (`twinlm people`), what is in it (`stats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from twinlm.corpus.db import Corpus
from twinlm.identities import Identities, Resolver
from twinlm.model import utc_from_ms


@dataclass(frozen=True, slots=True)
class Speaker:
    source: str
    author_id: str
    author_name: str  # the most recent display name
    messages: int
    first: datetime | None
    last: datetime | None
    person: str | None  # "me", a canonical name from twin.yaml, or None when not mapped yet
    names: tuple[str, ...] = ()  # every name the account has used, the most recent display name first
    matched_by: str | None = None  # the alias of twin.yaml that made it `person` (or why it is me)


@dataclass(slots=True)
class SourceStats:
    source: str
    conversations: int
    messages: int
    first: datetime | None
    last: datetime | None
    top_speakers: list[tuple[str, int]] = field(default_factory=list)


def owners(corpus: Corpus) -> frozenset[tuple[str, str]]:
    """(source, author id) of the accounts that made the exports, where the exports say so."""
    rows = corpus.db.execute(
        "SELECT DISTINCT source, owner_id FROM conversations WHERE owner_id IS NOT NULL"
    ).fetchall()
    return frozenset((source, owner) for source, owner in rows)


def account_names(corpus: Corpus) -> dict[tuple[str, str], tuple[str, ...]]:
    """Every name each account (source, author id) has used: display names, the latest first (the
    one its most recent message shows), then the names only `author_names` remembers (Discord
    usernames, names from before a rename)."""
    names: dict[tuple[str, str], list[str]] = {}
    # The distinct names first (SQLite keeps only those, not a sort of every message: issue 18), then
    # their recency for the accounts that have several, from those accounts' messages only.
    for source, author_id, name in sorted(corpus.db.execute(_DISTINCT_NAMES)):
        names.setdefault((source, author_id), []).append(name)
    renamed = [account for account, found in names.items() if len(found) > 1]
    for start in range(0, len(renamed), _ACCOUNTS_A_QUERY):
        chunk = renamed[start : start + _ACCOUNTS_A_QUERY]
        query = _NAME_RECENCY.format(accounts=", ".join(["(?, ?)"] * len(chunk)))
        recency = {
            (source, author_id, name): key
            for source, author_id, name, *key in corpus.db.execute(query, [v for a in chunk for v in a])
        }
        for account in chunk:
            # Latest first: by the newest message's time (those without a time last), then its id.
            names[account].sort(key=lambda name, a=account: recency[(*a, name)])
    for source, author_id, name in corpus.db.execute(
        "SELECT source, author_id, name FROM author_names ORDER BY source, author_id, name"
    ):
        known = names.setdefault((source, author_id), [])
        if name not in known:
            known.append(name)
    return {account: tuple(found) for account, found in names.items()}


_DISTINCT_NAMES = "SELECT DISTINCT source, author_id, author_name FROM messages"
_ACCOUNTS_A_QUERY = 400  # (source, author id) pairs bound in one _NAME_RECENCY query
_NAME_RECENCY = """
SELECT source, author_id, author_name, max(ts) IS NULL, -max(ts), -max(id) FROM messages
WHERE (source, author_id) IN (VALUES {accounts}) GROUP BY source, author_id, author_name
"""


def speakers(corpus: Corpus, resolve: Resolver | Identities) -> list[Speaker]:
    """Every author with message counts, most active first. Documents have no speakers."""
    rows = corpus.db.execute(
        """
        SELECT source, author_id, count(*), min(ts), max(ts),
               (SELECT author_name FROM messages AS latest
                 WHERE latest.source = m.source AND latest.author_id = m.author_id
                 ORDER BY latest.ts DESC LIMIT 1)
        FROM messages AS m WHERE kind != 'document' AND NOT excluded AND superseded_by_import IS NULL
        GROUP BY source, author_id ORDER BY count(*) DESC, source, author_id
        """
    ).fetchall()
    if not isinstance(resolve, Identities):
        return [
            Speaker(source, author_id, name, n, _time(first), _time(last), resolve(source, author_id, name))
            for source, author_id, n, first, last, name in rows
        ]
    found = []
    for source, author_id, count, first, last, name in rows:
        person, why = resolve.match(source, author_id, name)
        names = resolve.names.get((source, author_id)) or (name,)
        found.append(  # the name the build gives an unmapped account: its latest display name
            Speaker(source, author_id, names[0], count, _time(first), _time(last), person, names, why)
        )
    return found


def source_stats(corpus: Corpus, top: int = 5) -> list[SourceStats]:
    stats = []
    for source, conversations, messages, first, last in corpus.db.execute(
        """
        SELECT c.source, count(DISTINCT c.id), count(m.id), min(m.ts), max(m.ts)
        FROM conversations AS c LEFT JOIN messages AS m ON m.conversation = c.id
        GROUP BY c.source ORDER BY count(m.id) DESC, c.source
        """
    ):
        top_rows = corpus.db.execute(
            """SELECT author_name, count(*) FROM messages WHERE source = ? AND kind != 'document'
               GROUP BY author_id ORDER BY count(*) DESC, author_name LIMIT ?""",
            (source, top),
        ).fetchall()
        stats.append(
            SourceStats(
                source,
                conversations,
                messages,
                _time(first),
                _time(last),
                [(name, count) for name, count in top_rows],
            )
        )
    return stats


@dataclass(frozen=True, slots=True)
class Superseded:
    """A message kept in the corpus but no longer in the newest export of its conversation: not trained."""

    import_id: int  # the import whose export no longer held it (`twinlm superseded --restore --import N`)
    conversation: int  # the conversation's row id
    source: str
    native_id: str  # the conversation's native id
    title: str
    author_name: str
    timestamp: datetime | None
    text: str


def superseded(corpus: Corpus, import_id: int | None = None) -> list[Superseded]:
    """Superseded messages (of one import, or all), by import, conversation and time."""
    where, params = "", ()
    if import_id is not None:
        where, params = "AND m.superseded_by_import = ?", (import_id,)
    rows = corpus.db.execute(
        f"""
        SELECT m.superseded_by_import, c.id, c.source, c.native_id, c.title, m.author_name, m.ts, m.text
        FROM messages AS m JOIN conversations AS c ON c.id = m.conversation
        WHERE m.superseded_by_import IS NOT NULL {where}
        ORDER BY m.superseded_by_import, c.source, c.native_id, m.ts IS NULL, m.ts, m.id
        """,
        params,
    ).fetchall()
    return [
        Superseded(import_id, conversation, source, native_id, title, author, _time(ts), text)
        for import_id, conversation, source, native_id, title, author, ts, text in rows
    ]


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else utc_from_ms(ms)
