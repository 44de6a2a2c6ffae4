"""Write a synthetic ChatGPT `conversations.json` of realistic shape, streamed, deterministic."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "are",
    "this",
    "be",
    "at",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "climbing",
    "coffee",
    "code",
    "python",
    "plan",
]


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def _conversation(rng: random.Random, index: int, turns: int) -> dict:
    start = 1_700_000_000.0 + index * 3600
    mapping: dict[str, dict] = {"root": {"id": "root", "message": None, "parent": None, "children": []}}
    parent = "root"
    for turn in range(turns):
        role = "user" if turn % 2 == 0 else "assistant"
        node_id = f"c{index}-n{turn}"
        mapping[parent]["children"].append(node_id)
        mapping[node_id] = {
            "id": node_id,
            "message": {
                "id": node_id,
                "author": {"role": role, "name": None, "metadata": {}},
                "create_time": start + turn * 30,
                "update_time": None,
                "content": {
                    "content_type": "text",
                    "parts": [_text(rng, rng.randint(5, 25) if role == "user" else rng.randint(30, 150))],
                },
                "status": "finished_successfully",
                "end_turn": role == "assistant",
                "weight": 1.0,
                "metadata": {"model_slug": "gpt-4o"} if role == "assistant" else {},
                "recipient": "all",
                "channel": None,
            },
            "parent": parent,
            "children": [],
        }
        parent = node_id
    return {
        "title": _text(rng, 4),
        "create_time": start,
        "update_time": start + turns * 30,
        "mapping": mapping,
        "current_node": parent,
        "conversation_id": f"conv-{index:08d}",
        "id": f"conv-{index:08d}",
        "default_model_slug": "gpt-4o",
        "is_archived": False,
    }


def write_chatgpt_export(path: Path, n_conversations: int, seed: int = 0) -> int:
    """Write `n_conversations` conversations (4-40 messages each); returns the message count."""
    rng = random.Random(seed)
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        for i in range(n_conversations):
            turns = rng.randint(2, 20) * 2
            total += turns
            f.write(("," if i else "") + json.dumps(_conversation(rng, i, turns), ensure_ascii=False))
        f.write("]")
    return total
