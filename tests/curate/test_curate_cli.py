"""Curation from the command line (issue 13): exclude/include by every selector, edits, notes, undo, the
change log's JSON round trip, and bad input (unknown ids, empty selections, markup in message text)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curate_data import ME, rows

from twinlm.config import TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.workspace import init_workspace

from testdata import EXAMPLES

Run = Callable[..., Any]


def excluded_chats(workspace: Path) -> set[str]:
    return {r[0] for r in rows(workspace, "SELECT source FROM conversations WHERE excluded")}


def excluded_texts(workspace: Path) -> set[str]:
    return {r[0] for r in rows(workspace, "SELECT text FROM messages WHERE excluded")}


def ok(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return result


def as_json(result: Any) -> Any:
    return json.loads(ok(result).stdout)


def test_conversations_lists_and_filters(twinlm: Run) -> None:
    everything = as_json(twinlm("conversations", "--json"))
    assert everything["total"] == 7
    telegram = as_json(twinlm("conversations", "--source", "telegram", "--json"))["conversations"]
    assert {c["title"] for c in telegram} == {"Jordan Lee", "Jordan"}
    chat = as_json(twinlm("conversations", "--chat", "CLIMBING", "--json"))["conversations"]
    assert [c["source"] for c in chat] == ["discord"]
    assert chat[0]["messages"] == 17 and chat[0]["first"] == "2024-06-07"
    found = as_json(twinlm("conversations", "--search", "north wall", "--json"))["conversations"]
    assert [c["key"] for c in found] == ["telegram:42"]
    page = as_json(twinlm("conversations", "--limit", "2", "--offset", "2", "--json"))
    assert page["total"] == 7 and len(page["conversations"]) == 2
    assert "Jordan" in ok(twinlm("conversations", "--person", "Jordan Lee")).stdout


def test_exclude_by_id_and_include_again(twinlm: Run, workspace: Path) -> None:
    ok(twinlm("exclude", "telegram:42"))  # one id: no question asked
    assert excluded_chats(workspace) == {"telegram"}
    listed = as_json(twinlm("conversations", "--excluded", "--json"))["conversations"]
    assert [c["key"] for c in listed] == ["telegram:42"]
    row_id = str(listed[0]["id"])
    assert "already" in ok(twinlm("exclude", row_id)).stdout
    ok(twinlm("include", row_id))
    assert excluded_chats(workspace) == set()


def test_exclude_by_each_selector(twinlm: Run, workspace: Path) -> None:
    cases = [
        (["--source", "whatsapp"], {"whatsapp"}),
        (["--chat", "climbing"], {"discord"}),
        # An alias from twin.yaml's people: both of Jordan's Telegram chats (the examples' and ours).
        (["--person", "jordan.l"], {"telegram"}),
        (["--since", "2024-06-10", "--until", "2024-06-10"], {"messenger"}),
        (["--search", "espresso"], {"chatgpt"}),
    ]
    for selector, expected in cases:
        result = ok(twinlm("exclude", *selector, "--yes", "--json"))
        assert excluded_chats(workspace) == expected, selector
        assert json.loads(result.stdout)["changed"] >= 1
        ok(twinlm("undo"))
        assert excluded_chats(workspace) == set()


def test_exclude_messages_by_person_dates_and_search(twinlm: Run, workspace: Path) -> None:
    ok(twinlm("exclude", "--messages", "--search", "great rope", "--yes"))
    assert excluded_texts(workspace) == {"great, bring the rope please"}
    ok(
        twinlm(
            "exclude", "--messages", "--person", "Jordan", "--source", "telegram", "--chat", "jordan", "-y"
        )
    )
    jordan = rows(
        workspace, "SELECT count(*) FROM messages WHERE source = 'telegram' AND author_name = 'Jordan'"
    )
    assert len(excluded_texts(workspace)) >= jordan[0][0] > 1
    assert not any(
        r[0] for r in rows(workspace, "SELECT excluded FROM messages WHERE author_name = ?", (ME,))
    )
    ok(twinlm("undo"))
    ok(twinlm("undo"))
    assert excluded_texts(workspace) == set()
    ok(twinlm("exclude", "--messages", "--since", "2024-03-02", "--until", "2024-03-03", "-y"))
    assert excluded_texts(workspace) == {
        "did you see the new route on the north wall?",
        "not yet, is it hard?",
        "very, the crux is a long reach",
        "then I need to try it this weekend",
    }


def test_bulk_changes_ask_first(twinlm: Run, workspace: Path) -> None:
    refused = twinlm("exclude", "--source", "telegram", input="n\n")
    assert refused.exit_code == 1 and "2 conversations" in refused.stdout
    assert excluded_chats(workspace) == set()
    dry = ok(twinlm("exclude", "--source", "telegram", "--dry-run"))
    assert "Would exclude 2 conversations" in dry.stdout and excluded_chats(workspace) == set()
    no_prompt = twinlm("exclude", "--source", "telegram", "--json")
    assert no_prompt.exit_code == 1 and "--yes" in no_prompt.stderr
    ok(twinlm("exclude", "--source", "telegram", input="y\n"))
    assert excluded_chats(workspace) == {"telegram"}


def message_id(workspace: Path, text: str) -> str:
    return str(rows(workspace, "SELECT id FROM messages WHERE text = ?", (text,))[0][0])


def test_edit_drop_keep_restore_note_and_undo(twinlm: Run, workspace: Path) -> None:
    mid = message_id(workspace, "sure thing, I have the long one")
    ok(twinlm("edit", mid, "sure, I have the 70 m one"))
    assert rows(workspace, "SELECT user_text FROM messages WHERE id = ?", (mid,)) == [
        ("sure, I have the 70 m one",)
    ]
    ok(twinlm("edit", mid, "--drop"))
    ok(twinlm("edit", mid, "--keep"))
    ok(twinlm("edit", mid, "--restore"))
    assert rows(workspace, "SELECT user_text, excluded FROM messages WHERE id = ?", (mid,)) == [(None, 0)]
    ok(twinlm("note", "telegram:42", "climbing talk"))
    assert rows(workspace, "SELECT user_note FROM conversations WHERE native_id = '42'") == [
        ("climbing talk",)
    ]
    log = as_json(twinlm("changes", "list", "--json"))
    assert [c["action"] for c in log] == ["edit", "drop", "keep", "restore", "note"]
    # Undo walks back: note, restore (the edit is back), keep (dropped again), drop, edit.
    ok(twinlm("undo"))
    assert rows(workspace, "SELECT user_note FROM conversations WHERE native_id = '42'") == [(None,)]
    ok(twinlm("undo"))
    assert rows(workspace, "SELECT user_text FROM messages WHERE id = ?", (mid,)) == [
        ("sure, I have the 70 m one",)
    ]
    ok(twinlm("undo"))
    assert rows(workspace, "SELECT excluded FROM messages WHERE id = ?", (mid,)) == [(1,)]
    ok(twinlm("undo"))
    ok(twinlm("undo"))
    assert rows(workspace, "SELECT user_text, excluded FROM messages WHERE id = ?", (mid,)) == [(None, 0)]
    nothing = twinlm("undo")
    assert nothing.exit_code == 1 and "nothing to undo" in nothing.stderr
    assert len(as_json(twinlm("changes", "list", "--all", "--json"))) == 5
    assert as_json(twinlm("changes", "list", "--json")) == []


def test_undo_of_an_older_change_keeps_a_newer_one(twinlm: Run, workspace: Path) -> None:
    ok(twinlm("exclude", "--source", "telegram", "-y"))  # change 1
    ok(twinlm("include", "telegram:42"))  # change 2 touches one of the same rows
    done = as_json(twinlm("undo", "1", "--json"))
    assert (done["restored"], done["kept"]) == (1, 1)
    assert excluded_chats(workspace) == set()
    again = twinlm("undo", "1")
    assert again.exit_code == 1 and "already undone" in again.stderr


def test_changes_round_trip_to_another_corpus(twinlm: Run, workspace: Path, tmp_path: Path) -> None:
    mid = message_id(workspace, "yes, I will be there at seven")
    ok(twinlm("exclude", "--chat", "mom", "-y"))
    ok(twinlm("edit", mid, "yes, at 7"))
    ok(twinlm("exclude", "--messages", "--search", "crux", "-y"))
    ok(twinlm("note", "discord:500000000000000001", "fine"))
    ok(twinlm("note", "discord:500000000000000001", "--clear"))
    ok(twinlm("undo"))  # the note stays set; the undone --clear is not exported
    exported = tmp_path / "changes.json"
    ok(twinlm("changes", "export", str(exported)))
    document = json.loads(exported.read_text())
    assert [c["action"] for c in document["changes"]] == ["exclude", "edit", "exclude", "note"]

    # A new machine: the same exports ingested into a fresh corpus (other row ids), then the file.
    other = tmp_path / "other"
    init_workspace(other, TwinConfig(name="alex", me=[ME]))
    export = next((workspace.parent / "exports").rglob("result.json"))
    with Corpus(other / "corpus.db") as corpus:
        assert not ingest([export, EXAMPLES], corpus, ParseOptions(timezone="UTC")).failed
    from typer.testing import CliRunner

    from twinlm.cli import app

    def there(*args: str) -> Any:
        return CliRunner().invoke(app, [*args, "-w", str(other)], catch_exceptions=False)

    done = as_json(there("changes", "import", str(exported), "--json"))
    assert done == {"changes": 4, "new": 4, "applied": 4, "missing": 0}
    mine = "SELECT source, native_id, excluded, user_text FROM messages ORDER BY source, native_id"
    assert rows(other, mine) == rows(workspace, mine)
    chats = "SELECT source, native_id, excluded, user_note FROM conversations ORDER BY source, native_id"
    assert rows(other, chats) == rows(workspace, chats)
    assert as_json(there("changes", "import", str(exported), "--json"))["new"] == 0  # idempotent
    # Undo there works on the imported log.
    ok(there("undo"))
    assert rows(other, "SELECT user_note FROM conversations WHERE source = 'discord'") == [(None,)]


def test_bad_changes_files_are_one_line(twinlm: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for content, says in [
        ("{", "not valid JSON"),
        ('{"changes": []}', "not a twinlm changes file"),
        (
            '{"twinlm_changes": 1, "changes": [{"uid": "u", "at": "t", "user": "me", "action": "edit", '
            '"selector": {}, "items": [["message", "telegram", "42:1", {}, {"text": "evil"}]]}]}',
            "items[0]",
        ),
        (
            '{"twinlm_changes": 1, "changes": [{"uid": "u", "at": "t", "user": "me", "action": "rm -rf", '
            '"selector": {}, "items": []}]}',
            "unknown action 'rm -rf'",
        ),
    ]:
        bad.write_text(content)
        result = twinlm("changes", "import", str(bad))
        assert result.exit_code == 1 and says in result.stderr, result.stderr
        assert "Traceback" not in result.output


def test_unknown_ids_and_empty_selections(twinlm: Run, workspace: Path) -> None:
    for args, says in [
        (["exclude", "999"], "no conversation '999'"),
        (["exclude", "telegram:nope"], "no conversation 'telegram:nope'"),
        (["edit", "99999", "x"], "no message '99999'"),
        (["note", "424242", "x"], "no conversation '424242'"),
        (["show", "424242"], "no conversation '424242'"),
        (["exclude", "--chat", "no such chat", "-y"], "nothing matches"),
        (["exclude", "--messages", "--search", "zebra", "-y"], "nothing matches"),
        (["exclude"], "say what to change"),
        (["exclude", "--since", "2024-13-01"], "YYYY-MM-DD"),
        (["exclude", "--since", "2024-02-01", "--until", "2024-01-01"], "after --until"),
        (["exclude", "--person", "Nobody At All"], "nobody of that name"),
        (["exclude", "--search", "!!!"], "no word to search for"),
        (["edit", "1"], "exactly one of"),
        (["edit", "1", "   "], "empty"),
        (["undo", "77"], "no change 77"),
    ]:
        result = twinlm(*args)
        assert result.exit_code == 1, (args, result.output)
        assert says in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
    assert as_json(twinlm("changes", "list", "--json")) == []


def test_markup_and_control_characters_in_text_are_shown_literally(twinlm: Run, workspace: Path) -> None:
    mid = message_id(workspace, "then I need to try it this weekend")
    hostile = "[bold red]boom[/] <script>alert(1)</script> \x1b]0;pwned\x07"
    ok(twinlm("edit", mid, hostile))
    shown = ok(twinlm("show", "telegram:42", "--session", "1")).stdout
    assert "[bold red]boom[/] <script>alert(1)</script>" in shown
    assert "\x1b" not in shown and "\x07" not in shown
    data = as_json(twinlm("show", "telegram:42", "--json"))
    texts = [m["text"] for s in data["sessions"] for m in s["messages"]]
    assert hostile in texts  # JSON is data: kept as it is


def test_import_before_the_export_is_ingested_then_again_after(
    twinlm: Run, workspace: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from twinlm.cli import app

    mid = message_id(workspace, "yes, I will be there at seven")
    ok(twinlm("edit", mid, "yes, at 7"))
    ok(twinlm("exclude", "--chat", "climbing", "-y"))
    exported = tmp_path / "changes.json"
    ok(twinlm("changes", "export", str(exported)))

    other = tmp_path / "other"
    init_workspace(other, TwinConfig(name="alex", me=[ME]))

    def there(*args: str) -> Any:
        return CliRunner().invoke(app, [*args, "-w", str(other)], catch_exceptions=False)

    with Corpus(other / "corpus.db") as corpus:  # only the examples so far: our Telegram chat is not there
        assert not ingest([EXAMPLES], corpus, ParseOptions(timezone="UTC")).failed
    first = as_json(there("changes", "import", str(exported), "--json"))
    assert first == {"changes": 2, "new": 2, "applied": 1, "missing": 1}
    ok(there("include", "--chat", "climbing", "-y"))  # a later choice on this machine
    export = next((workspace.parent / "exports").rglob("result.json"))
    with Corpus(other / "corpus.db") as corpus:
        assert not ingest([export], corpus, ParseOptions(timezone="UTC")).failed
    second = as_json(there("changes", "import", str(exported), "--json"))
    assert second == {"changes": 2, "new": 0, "applied": 1, "missing": 0}
    edited = "SELECT user_text FROM messages WHERE source = 'telegram' AND native_id = '42:2'"
    assert rows(other, edited) == [("yes, at 7",)]
    # The include made here after the first import stands: importing again did not exclude the chat again.
    assert rows(other, "SELECT excluded FROM conversations WHERE source = 'discord'") == [(0,)]
    ok(there("undo", "1"))  # the imported edit's undo covers the row it reached on the second import
    assert rows(other, edited) == [(None,)]


def test_search_follows_edits_and_their_undo(twinlm: Run, workspace: Path) -> None:
    def found(words: str) -> list[str]:
        return [
            c["key"] for c in as_json(twinlm("conversations", "--search", words, "--json"))["conversations"]
        ]

    assert found("rope") != [] and found("zeppelin") == []  # the search table is made here
    ok(twinlm("edit", message_id(workspace, "great, bring the rope please"), "bring the zeppelin"))
    assert found("zeppelin") == ["telegram:42"]
    assert "telegram:42" not in found("great rope")
    ok(twinlm("undo"))
    assert found("zeppelin") == [] and found("great rope") == ["telegram:42"]


def test_the_change_log_shows_imported_text_literally(twinlm: Run, workspace: Path, tmp_path: Path) -> None:
    hostile = "[bold red]x[/] \x1b]0;pwned\x07"
    document = {
        "twinlm_changes": 1,
        "changes": [
            {
                "uid": "u1",
                "at": hostile,
                "user": hostile,
                "action": "note",
                "selector": {"chat": hostile},
                "items": [["conversation", "telegram", "42", {"user_note": None}, {"user_note": hostile}]],
            }
        ],
    }
    path = tmp_path / "changes.json"
    path.write_text(json.dumps(document))
    ok(twinlm("changes", "import", str(path)))
    for args in (["changes", "list"], ["conversations", "--source", "telegram"], ["show", "telegram:42"]):
        shown = ok(twinlm(*args)).stdout
        assert "\x1b" not in shown and "\x07" not in shown, args
    assert "[bold" in ok(twinlm("changes", "list")).stdout  # markup shown, not applied


def test_show_with_a_session_gives_that_sessions_figures_as_its_own(twinlm: Run, workspace: Path) -> None:
    """`show --session N` counted samples and trained turns of session N only but printed them beside the
    chat's number of sessions, as if the whole chat made that few."""
    whole = ok(twinlm("show", "telegram:42")).stdout.splitlines()[1]
    one = ok(twinlm("show", "telegram:42", "--session", "1")).stdout.splitlines()[1]
    total = int(whole.split(" sessions,")[0])
    assert total >= 2 and whole.startswith(f"{total} sessions, ")
    data = as_json(twinlm("show", "telegram:42", "--session", "1", "--json"))
    (part,) = data["sessions"]
    samples = [s for s in part["samples"] if s["kept"]]
    assert one.startswith(f"session 1 of {total}: {len(samples)} samples, ")


def test_show_prints_the_first_sessions_of_a_long_conversation_and_says_how_to_see_more(
    twinlm: Run, monkeypatch: Any
) -> None:
    """A chat of years has hundreds of thousands of sessions: `show` printed (and first built) them all."""
    import twinlm.cli.curate as curate_cli

    monkeypatch.setattr(curate_cli, "SHOW_SESSIONS", 1)  # the fixture's chat has two sessions
    first = ok(twinlm("show", "telegram:42")).stdout
    every = ok(twinlm("show", "telegram:42", "--all")).stdout
    assert first.count("── session ") == 1 and "── session 0" in first
    assert first.splitlines()[1].startswith("session 0 of 2: ")
    said = " ".join(first.split())  # as one line, whatever the terminal's width
    assert "The first 1 of 2 sessions: --session N shows session N, --all every one" in said
    assert every.count("── session ") == 2 and every.splitlines()[1].startswith("2 sessions, ")
    assert "--all every one" not in every
    assert len(as_json(twinlm("show", "telegram:42", "--json"))["sessions"]) == 2  # scripts get them all
    assert "--all every one" not in ok(twinlm("show", "telegram:42", "--session", "1")).stdout
