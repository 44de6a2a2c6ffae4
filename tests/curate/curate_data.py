"""The curation tests' data: a Telegram chat with Jordan (two sessions), a newer export of it, helpers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from twinlm.corpus.db import Corpus

ME = "Alex Rivera"
DAY = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp())

# (message id, author, text, seconds after DAY): two sessions (a pause of a day between them).
CHAT = [
    (1, "Jordan", "hey, are you coming to the climbing gym tonight?", 0),
    (2, ME, "yes, I will be there at seven", 60),
    (3, "Jordan", "great, bring the rope please", 120),
    (4, ME, "sure thing, I have the long one", 180),
    (5, "Jordan", "did you see the new route on the north wall?", 86_400),
    (6, ME, "not yet, is it hard?", 86_460),
    (7, "Jordan", "very, the crux is a long reach", 86_520),
    (8, ME, "then I need to try it this weekend", 86_580),
]
NEWER = [
    (9, "Jordan", "the gym changed the routes again today", 3 * 86_400),
    (10, ME, "oh no, my project is gone then", 3 * 86_400 + 60),
]


def telegram_export(path: Path, messages: list[tuple[int, str, str, int]], *, chat_id: int = 42) -> Path:
    """A Telegram Desktop single-chat export (result.json) of `messages`."""
    users = {ME: 1, "Jordan": 2}
    body = {
        "name": "Jordan",
        "type": "personal_chat",
        "id": chat_id,
        "messages": [
            {
                "id": mid,
                "type": "message",
                "date": datetime.fromtimestamp(DAY + at, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "date_unixtime": str(DAY + at),
                "from": who,
                "from_id": f"user{users[who]}",
                "text": text,
                "text_entities": [{"type": "plain", "text": text}],
            }
            for mid, who, text, at in messages
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return path


def rows(workspace: Path, query: str, params: tuple = ()) -> list[tuple]:
    with Corpus(workspace / "corpus.db") as corpus:
        return corpus.db.execute(query, params).fetchall()
