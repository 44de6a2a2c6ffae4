"""ChatGPT export parser: visible branch only, custom instructions, tools left out, broken trees."""

from __future__ import annotations

import contextlib
import json
import sys
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, ParseOptions, ParseReport, Role
from twinlm.sources import chatgpt, detect
from twinlm.sources._common import read_head, stable_id

from testdata import REALDATA

FIX = Path(__file__).parent.parent / "fixtures" / "chatgpt"
FIXTURES = sorted(FIX.glob("*.json"))


def node(message_id: str | None) -> str | None:
    """The ChatGPT node id inside a message id ("<conversation id>:<node id>")."""
    return None if message_id is None else message_id.split(":", 1)[1]


def run(name: str, options: ParseOptions | None = None) -> tuple[list[Conversation], ParseReport]:
    report = ParseReport()
    convs = list(chatgpt.parse(FIX / name, options or ParseOptions(), report))
    return convs, report


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def by_id(convs: list[Conversation]) -> dict[str, Conversation]:
    return {c.id: c for c in convs}


# --- branches, custom instructions, several conversations --------------------------------------


def test_array_of_several_conversations_in_file_order() -> None:
    convs, report = run("branched.json")
    assert [c.id for c in convs] == ["conv-branch", "conv-ci", "conv-wrapped", "conv-system"]
    assert report.conversations == 4
    assert report.messages == 11
    assert report.skipped == Counter({"other branch": 3, "hidden node": 2})
    assert report.notes == Counter({"custom instructions -> system prompt": 3})
    for c in convs:
        assert c.source == "chatgpt"
        assert c.kind == "assistant"
        assert c.participants == ("You", "ChatGPT")


def test_only_the_current_node_branch_is_kept() -> None:
    conv = by_id(run("branched.json")[0])["conv-branch"]
    assert conv.title == "Branched maths"
    assert conv.system_prompt is None
    assert conv.platform_detail == "model: gpt-4"  # no default_model_slug: first answer's model
    assert [node(m.id) for m in conv.messages] == ["a-u1", "a-a1", "a-u2b", "a-a3b"]
    assert [m.text for m in conv.messages] == ["Hi there", "Hello! How can I help?", "What is 2+3?", "Five."]
    assert [m.role for m in conv.messages] == [Role.USER, Role.ASSISTANT, Role.USER, Role.ASSISTANT]
    assert [(m.author_id, m.author_name) for m in conv.messages] == [
        ("user", "You"),
        ("assistant", "ChatGPT"),
        ("user", "You"),
        ("assistant", "ChatGPT"),
    ]
    assert [m.timestamp for m in conv.messages] == [
        utc(1700000000.5),
        utc(1700000001.25),
        utc(1700000020.0),
        utc(1700000030.75),
    ]
    assert conv.messages[0].timestamp == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert [node(m.reply_to) for m in conv.messages] == [None, "a-u1", "a-a1", "a-u2b"]
    # the edited user turn (it has a user sibling) is flagged; the regenerated answer is not
    assert [m.edited for m in conv.messages] == [False, False, True, False]
    assert all(m.kind is Kind.TEXT for m in conv.messages)


def test_custom_instructions_become_the_system_prompt() -> None:
    convs = by_id(run("branched.json")[0])
    ci = convs["conv-ci"]
    # user_context_message_data holds the user's own words, without OpenAI's wrapper
    assert ci.system_prompt == "I am a nurse in Lyon.\n\nAnswer in French, briefly."
    assert ci.platform_detail == "model: gpt-4o"  # default_model_slug wins over the answers' slug
    assert ci.title == "Custom instructions"
    # two assistant nodes of one answer stay two messages
    assert [(node(m.id), m.role, m.text) for m in ci.messages] == [
        ("b-u1", Role.USER, "Quelle heure est-il à Tokyo ?"),
        ("b-a1", Role.ASSISTANT, "Il est 9 h."),
        ("b-a1b", Role.ASSISTANT, "(heure de Tokyo)"),
    ]
    assert node(ci.messages[2].reply_to) == "b-a1"
    assert ci.messages[0].timestamp == utc(1710000000.0)

    wrapped = convs["conv-wrapped"]
    assert wrapped.system_prompt == "I write Rust at work.\nI have two cats.\n\nBe terse."
    assert [m.text for m in wrapped.messages] == ["ping", "pong"]
    assert wrapped.platform_detail == ""

    old = convs["conv-system"]
    assert old.system_prompt == "You are a helpful pirate."
    assert [(m.author_name, m.text) for m in old.messages] == [("You", "Ahoy?"), ("ChatGPT", "Arr!")]


# --- what is left out ---------------------------------------------------------------------------


def test_tool_browsing_code_and_reasoning_nodes_are_left_out_and_counted() -> None:
    convs, report = run("tools.json")
    assert len(convs) == 1
    conv = convs[0]
    assert conv.id == "conv-tools"
    assert [(node(m.id), m.role, m.text) for m in conv.messages] == [
        ("t-u1", Role.USER, "Plot sin(x), then find today's news."),
        ("t-final", Role.ASSISTANT, "Here is the plot and today's news."),
    ]
    assert node(conv.messages[1].reply_to) == "t-u1"
    assert conv.messages[1].timestamp == utc(1720000060.0)
    assert report.messages == 2
    assert report.skipped == Counter(
        {
            "reasoning": 3,  # thoughts, reasoning_recap, channel "analysis"
            "tool call": 2,  # code sent to python, search sent to browser
            "browsing": 2,  # tether_browsing_display, tether_quote
            "hidden node": 2,  # is_visually_hidden_from_conversation, weight 0
            "code execution output": 1,
            "system error": 1,
            "non-final channel (commentary)": 1,
            "tool message": 1,  # a generated image from dalle
            "computer output": 1,
            "memory context": 1,
        }
    )
    assert not report.notes


def test_multimodal_images_voice_code_files_and_timestamps() -> None:
    convs, report = run("multimodal.json")
    conv = convs[0]
    got = [(node(m.id), m.role, m.kind, m.text) for m in conv.messages]
    assert got == [
        ("m-u1", Role.USER, Kind.TEXT, "What is in this picture?\n[image]"),
        ("m-a1", Role.ASSISTANT, Kind.TEXT, "A cat."),
        ("m-u2", Role.USER, Kind.MEDIA, "[image]\n[image]"),
        ("m-a2", Role.ASSISTANT, Kind.TEXT, "```python\nprint('hi')\n```"),
        ("m-u3", Role.USER, Kind.TEXT, "can you hear me"),
        ("m-a3", Role.ASSISTANT, Kind.TEXT, "Yes, loud and clear."),
        ("m-u4", Role.USER, Kind.MEDIA, "[voice message]"),
        ("m-a4", Role.ASSISTANT, Kind.TEXT, "```\nls -la\n```"),
        ("m-u5", Role.USER, Kind.TEXT, "Summarise this\n[file]"),
        ("m-a7", Role.ASSISTANT, Kind.TEXT, "Done."),
    ]
    ts = {node(m.id): m.timestamp for m in conv.messages}
    assert ts["m-u1"] == utc(1730000000.0)
    assert ts["m-a1"] is None  # null create_time
    assert ts["m-u2"] is None  # absurd create_time (1e20): dropped, noted
    assert ts["m-a7"] == utc(1730000010.0)
    assert report.skipped == Counter({"unknown content type (app_pairing_content)": 1, "empty message": 1})
    assert report.notes == Counter(
        {"voice message kept as its transcription": 2, "absurd timestamp dropped": 1}
    )


def test_media_drop_option() -> None:
    convs, report = run("multimodal.json", ParseOptions(media="drop"))
    texts = {node(m.id): m.text for m in convs[0].messages}
    assert texts["m-u1"] == "What is in this picture?"
    assert texts["m-u5"] == "Summarise this"
    assert "m-u2" not in texts  # images only: nothing left
    assert "m-u4" not in texts  # voice only
    assert len(convs[0].messages) == 8
    assert report.skipped == Counter(
        {
            "media dropped (image)": 3,
            "media dropped (voice message)": 1,
            "media dropped (file)": 1,
            "unknown content type (app_pairing_content)": 1,
            "empty message": 1,
        }
    )


def test_long_messages_are_clipped() -> None:
    convs, report = run("branched.json", ParseOptions(max_message_chars=5))
    conv = by_id(convs)["conv-branch"]
    assert [m.text for m in conv.messages] == ["Hi th", "Hello", "What ", "Five."]
    assert report.notes["message cut to max_message_chars"] == 6  # 3 here, 3 in conv-ci


def test_big_conversations_come_in_slices_with_one_id() -> None:
    convs, report = run("multimodal.json", ParseOptions(batch_size=4))
    assert [c.id for c in convs] == ["conv-media"] * 3
    assert [len(c.messages) for c in convs] == [4, 4, 2]
    assert report.conversations == 1
    assert report.messages == 10


# --- broken trees and odd shapes ----------------------------------------------------------------


def test_cycles_dangling_parents_and_missing_current_node() -> None:
    convs, report = run("broken_tree.json")
    got = {c.id: [(node(m.id), m.text) for m in c.messages] for c in convs}
    assert got == {
        "conv-cycle": [("x1", "one"), ("x2", "two"), ("x3", "three")],
        "conv-dangling": [("y-u1", "orphan question"), ("y-a1", "orphan answer")],
        # no current_node: from the root, always the last child
        "conv-nocurrent": [
            ("z-u1", "tell me a joke"),
            ("z-a1b", "second joke"),
            ("z-u2", "ha"),
            ("z-a2", "glad you liked it"),
        ],
        "conv-badcurrent": [("w-u1", "are you there"), ("w-a1", "yes")],
        "conv-allcycle": [("v1", "round"), ("v2", "and round")],
    }
    assert report.skipped == Counter({"other branch": 1})  # z-a1
    assert report.notes == Counter(
        {"current_node missing, last branch used": 3, "cycle in parent links": 1, "dangling parent link": 1}
    )
    assert report.conversations == 5
    assert report.messages == 13


def test_single_conversation_object_not_in_a_list() -> None:
    convs, report = run("single.json")
    assert len(convs) == 1
    conv = convs[0]
    # no id in the file: a stable id from title and create_time
    assert conv.id == stable_id("One conversation\n\nTitle: not in a list", 1680000000.123)
    assert conv.title == "One conversation\n\nTitle: not in a list"
    assert conv.platform_detail == "model: text-davinci-002-render-sha"
    assert [(node(m.id), m.role, m.text, m.timestamp) for m in conv.messages] == [
        ("s-u1", Role.USER, "Hello", None),
        ("s-a1", Role.ASSISTANT, "Hi!", None),
        ("s-u2", Role.USER, "Bye", utc(1680000050.0)),
        ("s-a2", Role.ASSISTANT, "Bye!", utc(1680000051.5)),
    ]
    assert report.skipped == Counter({"hidden node": 1})  # the empty system message


def test_malformed_records_are_skipped_and_counted() -> None:
    convs, report = run("malformed.json")
    assert [c.id for c in convs] == ["conv-bad"]
    assert [(node(m.id), m.text, m.timestamp) for m in convs[0].messages] == [("n5", "ok text", None)]
    assert report.skipped == Counter(
        {
            "malformed conversation": 3,  # 42, a string, an object without mapping
            "malformed message": 3,  # node not an object, message not an object, author not an object
            "empty message": 1,  # parts not a list
            "unknown role (critic)": 1,
        }
    )


def _ids(path: Path) -> list[tuple[str, list[str]]]:
    convs = chatgpt.parse(path, ParseOptions(), ParseReport())
    return [(c.id, [node(m.id) for m in c.messages]) for c in convs]


def test_ids_are_stable_across_runs() -> None:
    for path in FIXTURES:
        assert _ids(path) == _ids(path)


def test_message_ids_are_unique_across_fixture_files() -> None:
    ids = [mid for path in FIXTURES for _, mids in _ids(path) for mid in mids]
    assert len(ids) == len(set(ids)) == 41


# --- bad files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"  \n\t\r\n ", "empty file"),
        (bytes(range(256)) * 4, "not a ChatGPT export"),
        (b"42", "not a ChatGPT export"),
        (b'{"title": "x", "messages": []}', "no 'mapping'"),
        (b"[] trailing", r"invalid JSON \(data after the end of the array\)"),
    ],
)
def test_unreadable_files_raise_export_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "conversations.json"
    path.write_bytes(data)
    with pytest.raises(ExportError, match=message) as err:
        list(chatgpt.parse(path, ParseOptions(), ParseReport()))
    assert str(path) in str(err.value)


def test_truncated_export_names_the_byte_and_the_conversation(tmp_path: Path) -> None:
    data = (FIX / "branched.json").read_bytes()
    cut = data.index(b'"conv-ci"') + 200
    path = tmp_path / "conversations.json"
    path.write_bytes(data[:cut])
    report = ParseReport()
    got: list[str] = []
    with pytest.raises(ExportError) as err:
        got.extend(c.id for c in chatgpt.parse(path, ParseOptions(), report))
    assert got == ["conv-branch"]  # what came before the damage was read
    assert err.value.where == f"byte {cut} (conversations[1])"
    assert err.value.message.startswith("truncated JSON (the file ends early: ")


def test_non_utf8_text_is_an_export_error(tmp_path: Path) -> None:
    data = (FIX / "branched.json").read_bytes().replace("à".encode(), b"\xe0")
    path = tmp_path / "conversations.json"
    path.write_bytes(data)
    with pytest.raises(ExportError, match="conversations\\[1\\]"):
        list(chatgpt.parse(path, ParseOptions(), ParseReport()))


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "conversations.json"
    path.write_bytes(b"\xef\xbb\xbf" + (FIX / "single.json").read_bytes())
    assert chatgpt.looks_like(read_head(path), path)
    assert [len(c.messages) for c in chatgpt.parse(path, ParseOptions(), ParseReport())] == [4]


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from([p.name for p in FIXTURES]),
    cut=st.floats(min_value=0.0, max_value=1.0),
    edits=st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.0), st.integers(0, 255)), max_size=8),
)
def test_damaged_files_parse_or_raise_export_error(
    tmp_path_factory: pytest.TempPathFactory, name: str, cut: float, edits: list[tuple[float, int]]
) -> None:
    data = bytearray((FIX / name).read_bytes())
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    data = data[: int(cut * len(data))] if cut < 0.95 else data
    path = tmp_path_factory.mktemp("fuzz") / "conversations.json"
    path.write_bytes(bytes(data))
    with contextlib.suppress(ExportError):
        list(chatgpt.parse(path, ParseOptions(), ParseReport()))


# --- detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_detects_fixtures(path: Path) -> None:
    assert chatgpt.looks_like(read_head(path), path)
    assert detect(path) == "chatgpt"


def test_detects_a_head_cut_mid_file(tmp_path: Path) -> None:
    data = (FIX / "branched.json").read_bytes()[:700]
    path = tmp_path / "export.bin"
    path.write_bytes(data)
    assert chatgpt.looks_like(read_head(path), path)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"messages": [{"role": "user", "content": "mapping"}]}',
        '{"messages": [{"content": "\\"mapping\\": {\\"content_type\\": 1}"}]}',
        '12/9/20, 23:55 - Ann: "mapping": {"content_type": 1}',
    ],
)
def test_rejects_other_content(text: str) -> None:
    assert not chatgpt.looks_like(text, Path("conversations.json"))


def _realdata(fmt: str | None = None) -> list[Path]:
    if not REALDATA.is_dir():
        pytest.skip("no realdata folder (set TWINLM_EXTRA_EXPORTS)")
    files = sorted(p for p in REALDATA.rglob("*") if p.is_file() and p.name != "PROVENANCE.md")
    return [p for p in files if fmt is None or p.parent.name == fmt]


REALDATA_EXPECTED = {
    # file: (conversations, messages, skipped)
    "kongmono_openai_convo_nodes.json": (1, 27, Counter({"hidden node": 1})),
    "pionxzh_fixture_image-generation.json": (
        1,
        4,
        Counter(
            {
                "tool message": 10,
                "reasoning": 4,
                "other branch": 2,
                "tool call": 2,
                "empty message": 1,
                "hidden node": 1,
            }
        ),
    ),
}


def test_realdata_files_parse_without_leaks() -> None:
    files = _realdata("chatgpt")
    assert files
    for path in files:
        report = ParseReport()
        convs = list(chatgpt.parse(path, ParseOptions(), report))
        messages = [m for c in convs for m in c.messages]
        for m in messages:
            assert m.role in (Role.USER, Role.ASSISTANT)
            assert (m.author_id, m.author_name) in {("user", "You"), ("assistant", "ChatGPT")}
            assert m.text.strip()
            assert not m.text.startswith(("tool text", "Thought for", "code "))
            assert m.timestamp is None or m.timestamp.tzinfo is UTC
        if path.name in REALDATA_EXPECTED:
            n_convs, n_msgs, skipped = REALDATA_EXPECTED[path.name]
            assert (len(convs), len(messages), report.skipped) == (n_convs, n_msgs, skipped)


def test_realdata_kongmono_shape() -> None:
    path = REALDATA / "chatgpt" / "kongmono_openai_convo_nodes.json"
    if not path.is_file():
        pytest.skip("realdata file absent")
    (conv,) = chatgpt.parse(path, ParseOptions(), ParseReport())
    assert conv.title == "Entity Mapping: Entities and Clear Research Questions\n\nTitle: Entity Mapping"
    assert conv.platform_detail == "model: text-davinci-002-render-sha"
    assert node(conv.messages[0].id) == "aaa2a6fb-0c93-4a39-8016-b6db79159698"
    assert conv.messages[0].timestamp == utc(1684891373.595028)
    assert node(conv.messages[-1].id) == "468287de-fc50-4cfa-90aa-ac161ed16ca0"
    assert conv.messages[-1].text == " with the broader movement for Jamaican independence."
    roles = [m.role for m in conv.messages]
    assert roles.count(Role.USER) == 13 and roles.count(Role.ASSISTANT) == 14


def test_message_ids_are_namespaced_by_conversation(tmp_path: Path) -> None:
    # "Branch in new chat" copies can carry the same node ids into another conversation.
    conv = {
        "id": "c1",
        "title": "t",
        "current_node": "n1",
        "mapping": {
            "n1": {
                "id": "n1",
                "parent": None,
                "children": [],
                "message": {
                    "id": "n1",
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": ["hi"]},
                },
            }
        },
    }
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([conv, {**conv, "id": "c2"}]), encoding="utf-8")
    ids = [m.id for c in chatgpt.parse(path, ParseOptions(), ParseReport()) for m in c.messages]
    assert ids == ["c1:n1", "c2:n1"]


# --- streaming: layouts, guessed conversation ends, damage in the middle --------------------------

BENCHMARKS = Path(__file__).parent.parent.parent / "benchmarks"
LAYOUTS: dict[str, dict[str, Any]] = {
    "minified": {"separators": (",", ":")},
    "minified-spaced": {},  # json.dumps' default: `}, {"title": ...`
    "indent-1": {"indent": 1},
    "indent-2": {"indent": 2, "ensure_ascii": False},
    "indent-4": {"indent": 4},
    "tabs": {"indent": "\t"},
}


def parse_all(path: Path, options: ParseOptions | None = None) -> tuple[list[Conversation], ParseReport]:
    report = ParseReport()
    return list(chatgpt.parse(path, options or ParseOptions(), report)), report


@pytest.mark.parametrize("layout", [*LAYOUTS, "one-per-line", "crlf"])
@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_every_layout_reads_the_same(tmp_path: Path, fixture: Path, layout: str) -> None:
    data = json.loads(fixture.read_text(encoding="utf-8"))
    if layout == "one-per-line" and isinstance(data, list):
        text = "[\n" + ",\n".join(json.dumps(c) for c in data) + "\n]\n"
    elif layout == "crlf":
        text = json.dumps(data, indent=2).replace("\n", "\r\n")
    else:
        text = json.dumps(data, **LAYOUTS.get(layout, {}))
    path = tmp_path / "conversations.json"
    path.write_text(text, encoding="utf-8")
    assert parse_all(path) == parse_all(fixture)


def _citing(i: int, refs: int, big: int = 0) -> dict[str, Any]:
    """A conversation whose answer cites `refs` pages: a nested list of objects that, like the
    conversations themselves, start with "title" (in minified files they look like a next one)."""
    items = [{"title": f"page {k} ü", "url": f"e.com/{k}", "snippet": '}, {"title": '} for k in range(refs)]
    mapping = {
        "root": {"id": "root", "message": None, "parent": None, "children": ["u"]},
        "u": {
            "id": "u",
            "parent": "root",
            "children": ["a"],
            "message": {
                "id": "u",
                "author": {"role": "user"},
                "create_time": 1.7e9 + i,
                "content": {"content_type": "text", "parts": [f"question {i} " + "é😀" * big]},
            },
        },
        "a": {
            "id": "a",
            "parent": "u",
            "children": [],
            "message": {
                "id": "a",
                "author": {"role": "assistant"},
                "create_time": 1.7e9 + i + 0.5,
                "content": {"content_type": "text", "parts": [f"answer {i}"]},
                "metadata": {"model_slug": "gpt-4o", "content_references": [{"title": "x", "items": items}]},
            },
        },
    }
    return {"title": f"t{i}", "create_time": 1.7e9, "mapping": mapping, "current_node": "a", "id": f"c{i}"}


def test_nested_lookalikes_and_conversations_bigger_than_a_read(tmp_path: Path) -> None:
    convs = [_citing(i, i % 6, big=800_000 if i in (4, 5) else 0) for i in range(14)]
    path = tmp_path / "conversations.json"
    results = []
    for layout in ("minified", "minified-spaced", "indent-2"):
        path.write_text(json.dumps(convs, **LAYOUTS[layout]), encoding="utf-8")
        results.append(parse_all(path, ParseOptions(max_message_chars=10**7)))
    got, report = results[0]
    assert [c.id for c in got] == [f"c{i}" for i in range(14)]
    assert [m.text for m in got[1].messages] == ["question 1 ", "answer 1"]
    assert len(got[4].messages[0].text) == len("question 4 ") + 1_600_000
    assert report.messages == 28
    assert results[1] == results[2] == results[0]


def test_generated_export_matches_a_plain_json_reading(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gen_chatgpt
    finally:
        sys.path.remove(str(BENCHMARKS))
    path = tmp_path / "conversations.json"
    gen_chatgpt.write_chatgpt_export(path, 300, seed=2)
    data = json.loads(path.read_text(encoding="utf-8"))
    # each generated conversation is one branch, its nodes in order after the root
    expected = [
        (f"{c['id']}:{nid}", n["message"]["content"]["parts"][0])
        for c in data
        for nid, n in c["mapping"].items()
        if n["message"]
    ]
    convs, report = parse_all(path)
    assert [(m.id, m.text) for c in convs for m in c.messages] == expected
    assert report.conversations == 300 and report.messages == len(expected)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    assert parse_all(path) == (convs, report)


def test_memory_stays_flat_however_many_conversations(tmp_path: Path) -> None:
    def peak(n: int) -> int:
        path = tmp_path / f"{n}.json"
        path.write_text(json.dumps([_citing(i, 2, big=200) for i in range(n)]), encoding="utf-8")
        tracemalloc.start()
        try:
            for _ in chatgpt.parse(path, ParseOptions(), ParseReport()):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(300), peak(3000)  # 1.3 MB and 13 MB of JSON
    assert large < 2 * small + 2_000_000  # a buffer of ~1 MB and one conversation at a time


def _damaged(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    text = json.dumps(json.loads((FIX / "branched.json").read_text(encoding="utf-8")))  # minified
    path = tmp_path / "conversations.json"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path, text.index(old)


@pytest.mark.parametrize(
    ("old", "new", "shift", "message", "index"),
    [
        ('"conv-wrapped"', '"conv-wrapped" x', 15, "invalid JSON (Expecting ',' delimiter)", 2),
        ('"title": "Custom', '"title": NaX, "Custom', 9, "invalid JSON (Expecting value)", 1),
        ('}, {"conversation_id"', '} {"conversation_id"', 2, 'invalid JSON (expected "," or "]")', 1),
        ('"title": "Custom', '"title": "\\x', 10, "invalid JSON (Invalid \\escape", 1),
    ],
)
def test_damage_in_a_minified_export_names_the_byte_and_conversation(
    tmp_path: Path, old: str, new: str, shift: int, message: str, index: int
) -> None:
    path, at = _damaged(tmp_path, old, new)
    got: list[str] = []
    with pytest.raises(ExportError) as err:
        got.extend(c.id for c in chatgpt.parse(path, ParseOptions(), ParseReport()))
    assert got == ["conv-branch", "conv-ci", "conv-wrapped", "conv-system"][:index]
    assert err.value.where == f"byte {at + shift} (conversations[{index}])"
    assert err.value.message.startswith(message)


A = '{"id": "a", "mapping": {}}'


@pytest.mark.parametrize(
    ("text", "ids", "message"),
    [
        (f"[{A},]", ["a"], "invalid JSON (Expecting value)"),
        (f"[{A}] x", ["a"], "invalid JSON (data after the end of the array)"),
        (f"{A} {{}}", ["a"], "invalid JSON (data after the end of the object)"),
        (f'[{A}, {{"mapping": {"[" * 3000}{"]" * 3000}}}]', ["a"], "JSON nested too deeply"),
    ],
)
def test_bad_endings_after_a_good_conversation(
    tmp_path: Path, text: str, ids: list[str], message: str
) -> None:
    path = tmp_path / "conversations.json"
    path.write_text(text, encoding="utf-8")
    got: list[str] = []
    with pytest.raises(ExportError, match=r"byte [0-9]+") as err:
        got.extend(c.id for c in chatgpt.parse(path, ParseOptions(), ParseReport()))
    assert got == ids
    assert err.value.message.startswith(message)


@pytest.mark.parametrize("text", ["hi", "", "  \n", "\u2003", "line\nline", "x" * 30])
@pytest.mark.parametrize("role", ["user", "assistant"])
def test_one_string_part_shortcut_matches_the_general_reading(text: str, role: str) -> None:
    def classify(parts: list[Any]) -> tuple[object, ParseReport]:
        report = ParseReport()
        msg = {"author": {"role": role}, "content": {"content_type": "text", "parts": parts}}
        return chatgpt._classify(msg, ParseOptions(max_message_chars=10), report), report

    assert classify([text]) == classify([text, None])  # a None part is ignored, via _parts_text
