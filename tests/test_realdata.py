"""Every parser over every real export in $TWINLM_EXTRA_EXPORTS (CI: ../shared/realdata).

Any folder of exports works: each file must be recognised and read without error, and no system or
service text may arrive as a message. Files we know (the shared real samples) are also checked for
their exact speakers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions, ParseReport
from twinlm.sources import detect, parse

EXTRA = os.environ.get("TWINLM_EXTRA_EXPORTS")
FILES = sorted(p for p in Path(EXTRA).rglob("*") if p.is_file()) if EXTRA else []
pytestmark = pytest.mark.skipif(not EXTRA, reason="set TWINLM_EXTRA_EXPORTS to a folder of exports")

# Text that platforms generate (notices, service events): it must never arrive as someone's message.
GENERATED = (
    "end-to-end encrypted",
    "Ende-zu-Ende-verschlüsselt",
    "created group",
    "added you",
    "Changed the channel name",
    "Changed the channel icon",
    "Pinned a message",
    "Started a call",
    "joined_telegram",
    "migrate_to_supergroup",
    "pin_message",
    "phone_call",
)

# (format, speakers) for the shared real samples; only checked when such a file is in the folder.
KNOWN: dict[str, tuple[str, set[str]]] = {
    "kongmono_openai_convo_nodes.json": ("chatgpt", {"ChatGPT", "You"}),
    "pionxzh_fixture_image-generation.json": ("chatgpt", {"You"}),  # every answer there is a tool's
    "chat-analytics_DM_2A_2M.json": ("discord", {"mlomb"}),  # the other author is a bot
    "chat-analytics_GC_3A_5M.json": ("discord", {"lombi", "mlomb", "theplant"}),
    "dcef_example_guild_chill_talk.json": ("discord", {"Adam", "Patrick", "RICK NITRO", "Thomas"}),
    "chat-analytics_messenger_2A_7M.json": ("messenger", {"Alice", "Bob"}),
    "chat-analytics_DM_2A_7M.json": ("telegram", {"Alice", "Bob"}),
    "telegram-chat-parser_public_supergroup.json": ("telegram", {"Ben"}),
    "telegram-chat-parser_saved.json": ("telegram", {"Ben", "test"}),
    "tkonverter_SYNTHETIC_schema_personal.json": ("telegram", {"Alice Example", "Me"}),
    "chat-analytics_4A_11M.txt": ("whatsapp", {"Alice", "Bob", "Eve", "Mallory", "Trent"}),
    "chat-miner_testlog_android.txt": (
        "whatsapp",
        {"+12 345 578", "Jahn Doe", "John Doe", "John Doe 🤓", "John-John Doe", "🤓"},
    ),
    "whatsapp-chat-parser_short-chat_android.txt": ("whatsapp", {"+410123456789", "Sample User", "TestBot"}),
    # "Pokemon Chat" only ever posts the encryption notice: not a speaker.
    "whatstk_pokemon_android_de.txt": (
        "whatsapp",
        {"Ash Ketchum", "Brock", "Jessie & James", "Meowth", "Misty", "Prof. Oak", "Raichu", "Wobbuffet"},
    ),
}


def _ids(files: list[Path]) -> list[str]:
    return [str(p.relative_to(EXTRA)) if EXTRA else p.name for p in files]


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_real_export_parses(path: Path) -> None:
    fmt = detect(path)
    assert fmt is not None, f"{path}: not recognised as any export format"
    report = ParseReport()
    conversations = list(parse(path, fmt, ParseOptions(timezone="UTC"), report))
    messages = [m for c in conversations for m in c.messages]
    if fmt != "documents":
        assert messages, f"{path}: no messages read ({dict(report.skipped)})"
    for m in messages:
        assert m.author_name.strip(), m
        assert m.text.strip(), m
        if fmt == "documents":
            continue  # a document may quote such text (a README about exports, say)
        for generated in GENERATED:
            assert generated not in m.text, f"{path}: platform text leaked in as a message: {m.text!r}"
    if path.name in KNOWN:
        expected_format, expected_speakers = KNOWN[path.name]
        assert fmt == expected_format
        assert {m.author_name for m in messages} == expected_speakers


def test_whole_folder_ingests_without_errors(tmp_path: Path) -> None:
    assert EXTRA
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([Path(EXTRA)], corpus, ParseOptions(timezone="UTC"))
        assert [f.error for f in result.failed] == []
        assert corpus.count("messages") == result.total().report.messages
        again = ingest([Path(EXTRA)], corpus, ParseOptions(timezone="UTC")).total().changes
        assert (again.new_messages, again.updated_messages) == (0, 0)
