"""Parser behaviour that `make mutate` found untested (docs/mutation.md), each against a value worked
out by hand from the format's rules: Telegram detection and replies, Discord ids, names, replies, zones
and attachments, Messenger's thread fields and media, ChatGPT's details, edits, parts and attachments."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from twinlm.errors import ExportError
from twinlm.model import Conversation, ParseOptions, ParseReport
from twinlm.sources import chatgpt, discord, messenger, telegram, whatsapp


def parse(module: Any, path: Path, data: Any, **options: Any) -> tuple[list[Conversation], ParseReport]:
    path.write_text(json.dumps(data), encoding="utf-8")
    report = ParseReport()
    return list(module.parse(path, ParseOptions(**options), report)), report


# --- Telegram ------------------------------------------------------------------------------------


@pytest.mark.parametrize("marker", ['"chats": {"list": []}', '"about": ""', '"user_id": 1'])
def test_telegram_full_export_is_recognised_by_any_one_account_key(marker: str) -> None:
    head = '{"personal_information": {"first_name": "A"}, ' + marker
    assert telegram.looks_like(head, Path("result.json"))


def test_telegram_single_chat_is_recognised_before_its_first_message() -> None:
    head = '{\n "name": "Mom",\n "type": "personal_chat",\n "id": 7,\n "messages": ['
    assert telegram.looks_like(head, Path("result.json"))


def _telegram_message(mid: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "date_unixtime": "1700000000",
        "from": "Mom",
        "from_id": "user7",
        "text": "hi",
    } | extra


def test_telegram_reply_with_a_peer_without_digits_stays_in_the_chat(tmp_path: Path) -> None:
    chat = {
        "name": "Mom",
        "type": "personal_chat",
        "id": 7,
        "messages": [
            _telegram_message(1),
            _telegram_message(2, reply_to_message_id=1, reply_to_peer_id="channel"),
        ],
    }
    (conv,), _ = parse(telegram, tmp_path / "result.json", chat)
    assert conv.messages[1].reply_to == "7:1"


def test_telegram_reply_from_another_chat_to_saved_messages(tmp_path: Path) -> None:
    """A full export of user 123456: a reply whose peer is the exporter points into Saved Messages."""
    chat = {
        "name": "Mom",
        "type": "personal_chat",
        "id": 7,
        "messages": [_telegram_message(2, reply_to_message_id=5, reply_to_peer_id="user123456")],
    }
    export = {"personal_information": {"user_id": 123456}, "chats": {"list": [chat]}}
    (conv,), _ = parse(telegram, tmp_path / "result.json", export)
    assert conv.messages[0].reply_to == "saved123456:5"


# --- Discord -------------------------------------------------------------------------------------


def _discord(messages: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {
        "guild": {"id": "1", "name": "G"},
        "channel": {"id": "2", "type": "GuildTextChat", "name": "c"},
        "messages": messages,
    } | top


def _discord_message(mid: Any = "10", **extra: Any) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "Default",
        "timestamp": "2024-06-01T10:00:00+00:00",
        "content": "hi",
        "author": {"id": "5", "name": "fay", "nickname": "Fay"},
    } | extra


def test_discord_integer_ids_from_resaved_files(tmp_path: Path) -> None:
    (conv,), report = parse(discord, tmp_path / "c.json", _discord([_discord_message(7001)]))
    assert [m.id for m in conv.messages] == ["2:7001"] and not report.skipped


def test_discord_a_non_string_nickname_is_shown_as_text(tmp_path: Path) -> None:
    message = _discord_message(author={"id": "5", "name": "fay", "nickname": 42})
    (conv,), _ = parse(discord, tmp_path / "c.json", _discord([message]))
    assert conv.messages[0].author_name == "42"


def test_discord_an_array_after_the_messages_is_not_read_as_messages(tmp_path: Path) -> None:
    export = _discord([_discord_message("10")], tags=[_discord_message("11")])
    (conv,), _ = parse(discord, tmp_path / "c.json", export)
    assert [m.id for m in conv.messages] == ["2:10"]


def test_discord_crosspost_is_not_a_reply_but_a_reply_elsewhere_is(tmp_path: Path) -> None:
    elsewhere = {"messageId": "99", "channelId": "3", "guildId": "1"}
    messages = [
        _discord_message("10", reference=elsewhere),  # a Default message from a followed channel
        _discord_message("11", type="Reply", reference=elsewhere),
    ]
    (conv,), _ = parse(discord, tmp_path / "c.json", _discord(messages))
    assert [m.reply_to for m in conv.messages] == [None, "3:99"]


def test_discord_unknown_type_reason_is_cut_at_40_characters(tmp_path: Path) -> None:
    _, report = parse(discord, tmp_path / "c.json", _discord([_discord_message(type="x" * 50)]))
    assert report.skipped == {"service message (" + "x" * 40 + ")": 1}


def test_discord_an_empty_file_name_falls_back_to_the_url(tmp_path: Path) -> None:
    attachment = {"id": "1", "fileName": "", "url": "https://cdn.example/a/photo.png"}
    (conv,), _ = parse(
        discord, tmp_path / "c.json", _discord([_discord_message(content="", attachments=[attachment])])
    )
    assert conv.messages[0].text == "[image]"


def test_discord_naive_times_without_a_zone_are_this_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9, no DST
    time.tzset()
    try:
        message = _discord_message(timestamp="2024-06-01T10:00:00")
        (conv,), _ = parse(discord, tmp_path / "c.json", _discord([message]))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert conv.messages[0].timestamp == datetime(2024, 6, 1, 1, 0, tzinfo=UTC)


# --- Messenger -----------------------------------------------------------------------------------


def _thread(messages: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {
        "participants": [{"name": "Ann"}, {"name": "Bo"}],
        "messages": messages,
        "title": "Ann",
        "is_still_participant": True,
        "thread_path": "inbox/ann_1",
    } | top


@pytest.mark.parametrize("messages", [{"messages_x": []}, {"messages": None}])
def test_messenger_without_a_messages_array_is_an_error(tmp_path: Path, messages: dict[str, Any]) -> None:
    export = {"participants": [{"name": "Ann"}], "title": "Ann"} | messages
    with pytest.raises(ExportError, match="no messages array"):
        parse(messenger, tmp_path / "message_1.json", export)


def test_messenger_other_booleans_do_not_change_participation(tmp_path: Path) -> None:
    export = _thread([], joinable_mode={"enabled": False}, is_group=False)
    (conv,), _ = parse(messenger, tmp_path / "message_1.json", export)
    assert conv.platform_detail == "chat"


def test_messenger_an_empty_photo_list_is_no_photo(tmp_path: Path) -> None:
    message = {"sender_name": "Ann", "timestamp_ms": 1_600_000_000_000, "content": "hi", "photos": []}
    (conv,), _ = parse(messenger, tmp_path / "message_1.json", _thread([message]))
    assert conv.messages[0].text == "hi"


# --- ChatGPT -------------------------------------------------------------------------------------


def _node(
    nid: str,
    parent: str | None,
    children: list[str],
    role: str | None = None,
    parts: Any = ("x",),
    **message: Any,
) -> dict[str, Any]:
    msg = None
    if role is not None:
        msg = {
            "id": nid,
            "author": {"role": role},
            "create_time": 1_700_000_000.0,
            "content": {"content_type": "text", "parts": list(parts)},
            "recipient": "all",
        } | message
    return {"id": nid, "message": msg, "parent": parent, "children": children}


def _conversation(nodes: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "title": "t",
        "mapping": {n["id"]: n for n in nodes},
        "current_node": nodes[-1]["id"],
    } | top


def test_chatgpt_model_is_the_first_answers_and_a_later_user_turn_keeps_it(tmp_path: Path) -> None:
    nodes = [
        _node("r", None, ["u1"]),
        _node("u1", "r", ["a1"], "user"),
        _node("a1", "u1", ["a2"], "assistant", metadata={"model_slug": "gpt-4"}),
        _node("a2", "a1", ["u2"], "assistant", metadata={"model_slug": "gpt-4o"}),
        _node("u2", "a2", [], "user"),
    ]
    (conv,), _ = parse(chatgpt, tmp_path / "conversations.json", [_conversation(nodes, gizmo_id="")])
    assert conv.platform_detail == "model: gpt-4"  # and an empty gizmo id adds no "gpt: "


def test_chatgpt_a_user_turn_beside_an_answer_is_not_an_edit(tmp_path: Path) -> None:
    nodes = [
        _node("r", None, ["s"]),
        _node("s", "r", ["u1", "a0"], "assistant"),
        _node("a0", "s", [], "assistant"),
        _node("u1", "s", [], "user"),
    ]
    (conv,), _ = parse(chatgpt, tmp_path / "conversations.json", [_conversation(nodes)])
    assert [m.edited for m in conv.messages] == [False, False]


def test_chatgpt_user_system_message_becomes_the_system_prompt(tmp_path: Path) -> None:
    nodes = [
        _node("r", None, ["i"]),
        _node("i", "r", ["u1"], "user", parts=["be brief"], metadata={"is_user_system_message": True}),
        _node("u1", "i", [], "user", parts=["hello"]),
    ]
    (conv,), _ = parse(chatgpt, tmp_path / "conversations.json", [_conversation(nodes)])
    assert conv.system_prompt == "be brief" and [m.text for m in conv.messages] == ["hello"]


def test_chatgpt_two_string_parts_are_both_kept(tmp_path: Path) -> None:
    nodes = [_node("r", None, ["u1"]), _node("u1", "r", [], "user", parts=["a", "b"])]
    (conv,), _ = parse(chatgpt, tmp_path / "conversations.json", [_conversation(nodes)])
    assert conv.messages[0].text == "a\nb"


def test_chatgpt_attachments_images_files_and_dropped_media(tmp_path: Path) -> None:
    image = {"id": "f1", "name": "photo.png"}  # no mime type: an image by its name, shown as an image part
    pdf = {"id": "f2", "name": "doc.pdf", "mime_type": "application/pdf"}
    nodes = [
        _node("r", None, ["u1"]),
        _node("u1", "r", ["u2"], "user", parts=["see"], metadata={"attachments": [image]}),
        _node("u2", "u1", ["u3"], "user", parts=[""], metadata={"attachments": [image]}),
        _node("u3", "u2", [], "user", parts=[""], metadata={"attachments": [pdf]}),
    ]
    path = tmp_path / "conversations.json"
    (conv,), report = parse(chatgpt, path, [_conversation(nodes)])
    assert [m.text for m in conv.messages] == ["see", "[file]"]
    assert report.skipped == {"empty message": 1}  # u2: an image-only attachment list, no text
    (conv,), report = parse(chatgpt, path, [_conversation(nodes)], media="drop")
    assert [m.text for m in conv.messages] == ["see"]
    assert report.skipped == {"empty message": 1, "media dropped (file)": 1}  # u3 counted once, as dropped


def test_telegram_a_named_chat_waits_for_its_name_after_the_messages(tmp_path: Path) -> None:
    """Only Saved Messages and Replies have no name: another chat's name may come after its messages."""
    path = tmp_path / "result.json"
    path.write_text('{"type": "personal_chat", "id": 7, "messages": [], "name": "Mom"}', encoding="utf-8")
    (conv,) = telegram.parse(path, ParseOptions(), ParseReport())
    assert conv.title == "Mom"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            '{"personal_information": {"user_id": 1}, "chats": {"list": [{"name": "A" "type": 1}]}}',
            "(chats.list[0])",
        ),
        ('{"name": "A" "type": 1}', "(top level)"),
    ],
)
def test_telegram_a_broken_chat_object_is_named_in_the_error(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ExportError, match=re.escape(where)):
        list(telegram.parse(path, ParseOptions(), ParseReport()))


# --- WhatsApp ------------------------------------------------------------------------------------


def _whatsapp(tmp_path: Path, lines: list[str], **options: Any) -> tuple[list[Any], ParseReport]:
    path = tmp_path / "WhatsApp Chat with Ann.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = ParseReport()
    convs = list(whatsapp.parse(path, ParseOptions(timezone="UTC", **options), report))
    return [m for c in convs for m in c.messages], report


@pytest.mark.parametrize(("authored", "expected"), [(5, True), (3, True), (2, False)])
def test_whatsapp_five_header_lines_after_a_title_look_like_a_chat(authored: int, expected: bool) -> None:
    """After a first line that is no header: at least 5 of the first 10 lines are headers, at least 3
    with "Name: " (the others are notices without a name)."""
    lines = [f"01/02/2024, 10:0{k} - " + ("Ann: hi" if k < authored else "Ann joined") for k in range(5)]
    assert whatsapp.looks_like("Chat export\n" + "\n".join(lines), Path("notes.txt")) is expected


@pytest.mark.parametrize(
    ("chat", "other", "expected"),
    [(10, 11, True), (9, 11, False), (2, 2, True), (2, 3, False)],  # lines past the 20th do not count
)
def test_whatsapp_resembles_half_of_the_first_20_lines(chat: int, other: int, expected: bool) -> None:
    """At least 2 chat-shaped lines and at least half of the first 20 non-empty lines."""
    head = "".join(f"01/02/2024, 10:0{k % 10} - Ann: hi\n" for k in range(chat)) + "plain words\n" * other
    assert whatsapp.resembles(head, Path("notes.txt")) is expected


def test_whatsapp_date_order_from_dates_that_run_forward_across_years(tmp_path: Path) -> None:
    """Every field <= 12: read month-first, the dates run forward (Dec 2019, Jan 2020, Dec 2020, Jan
    2021); read day-first they step back once. Without the year both readings would step back."""
    dates = ["12/05/19", "01/07/20", "12/03/20", "01/09/21"]
    messages, _ = _whatsapp(tmp_path, [f"{d}, 10:00 - Ann: m{k}" for k, d in enumerate(dates)])
    expected = [datetime(2019, 12, 5, 10, tzinfo=UTC), datetime(2020, 1, 7, 10, tzinfo=UTC),
                datetime(2020, 12, 3, 10, tzinfo=UTC), datetime(2021, 1, 9, 10, tzinfo=UTC)]  # fmt: skip
    assert [m.timestamp for m in messages] == expected


def test_whatsapp_half_hour_dst_fall_back_takes_the_second_reading(tmp_path: Path) -> None:
    """Lord Howe Island leaves DST on 7 April 2024 at 02:00 (+11:00) back to 01:30 (+10:30): 01:40 then
    01:35 are 14:40 and 15:05 UTC the day before."""
    lines = ["07/04/2024, 01:40 - Ann: before", "07/04/2024, 01:35 - Ann: after"]
    path = tmp_path / "WhatsApp Chat with Ann.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = ParseOptions(timezone="Australia/Lord_Howe", whatsapp_date_order="day_first")
    messages = [m for c in whatsapp.parse(path, options, ParseReport()) for m in c.messages]
    assert [m.timestamp for m in messages] == [
        datetime(2024, 4, 6, 14, 40, tzinfo=UTC),
        datetime(2024, 4, 6, 15, 5, tzinfo=UTC),
    ]


def test_whatsapp_a_message_whose_first_line_is_empty(tmp_path: Path) -> None:
    """ "Ann:" with the text on the next lines is Ann's message; ": odd:" (no name) is a system line."""
    lines = ["01/02/2024, 10:00 - Ann:", "hello", "01/02/2024, 10:01 - : odd:", "01/02/2024, 10:02 - Bo: hi"]
    messages, report = _whatsapp(tmp_path, lines)
    assert [(m.author_name, m.text) for m in messages] == [("Ann", "\nhello"), ("Bo", "hi")]
    assert report.skipped == {"system line": 1}


def test_whatsapp_a_long_message_is_cut_at_max_message_chars_not_before(tmp_path: Path) -> None:
    """40 characters of text over four lines, max 30: the first 30, noted (the header's length does
    not count against the text)."""
    lines = ["01/02/2024, 10:00 - Ann: " + "a" * 9, "b" * 9, "c" * 9, "d" * 9]
    messages, report = _whatsapp(tmp_path, lines, max_message_chars=30)
    assert [m.text for m in messages] == ["a" * 9 + "\n" + "b" * 9 + "\n" + "c" * 9 + "\n"]
    assert report.notes["message cut to max_message_chars"] == 1


@pytest.mark.parametrize(
    ("dates", "days"),
    [
        (["01/03/20", "05/03/20", "02/04/20", "06/04/20"], [(3, 1), (3, 5), (4, 2), (4, 6)]),  # day-first
        (["03/01/20", "03/05/20", "04/02/20", "04/06/20"], [(3, 1), (3, 5), (4, 2), (4, 6)]),  # month-first
    ],
)
def test_whatsapp_date_order_from_days_that_run_forward_in_a_month(
    tmp_path: Path, dates: list[str], days: list[tuple[int, int]]
) -> None:
    """1 and 5 March, 2 and 6 April 2020: the reading in which they run forward wins (the other steps
    back once, from 5 March to 2 April read the other way)."""
    messages, _ = _whatsapp(tmp_path, [f"{d}, 10:00 - Ann: m{k}" for k, d in enumerate(dates)])
    assert [m.timestamp for m in messages] == [datetime(2020, mo, d, 10, tzinfo=UTC) for mo, d in days]
