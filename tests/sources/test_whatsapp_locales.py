"""WhatsApp header layouts of locales beyond the Latin-script ones: each parses as a chat.

Sample lines follow the layouts that WhatsApp parser projects' test fixtures and users' bug reports
show (Korean and Chinese prefix meridians, French "à", Finnish "klo", Arabic comma and right-to-left
marks); names and texts are made up.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from twinlm.errors import ExportError
from twinlm.model import ParseOptions, ParseReport
from twinlm.sources import detect, whatsapp
from twinlm.sources._common import read_head

SAMPLES: dict[str, tuple[str, list[tuple[str, datetime, str]]]] = {
    # The layout quoted in issue 9: Korean date, prefix meridian, ", Name : text".
    "korean_comma": (
        "2024. 3. 13. 오후 2:05, 김민수 : 점심 먹었어?\n"
        "2024. 3. 13. 오후 2:07, 이지은 : 아직 ㅠㅠ\n같이 갈래?\n",
        [
            ("김민수", datetime(2024, 3, 13, 14, 5), "점심 먹었어?"),
            ("이지은", datetime(2024, 3, 13, 14, 7), "아직 ㅠㅠ\n같이 갈래?"),
        ],
    ),
    "korean_android": (
        "2024. 3. 13. 오전 9:05 - 김민수: 좋은 아침\n2024. 3. 13. 오후 12:30 - 이지은: 점심!\n",
        [
            ("김민수", datetime(2024, 3, 13, 9, 5), "좋은 아침"),
            ("이지은", datetime(2024, 3, 13, 12, 30), "점심!"),
        ],
    ),
    "korean_ios": (
        "[2024. 3. 13. 오전 12:05:09] 김민수: 자니?\n[2024. 3. 13. 오후 2:05:23] 이지은: 응\n",
        [
            ("김민수", datetime(2024, 3, 13, 0, 5, 9), "자니?"),
            ("이지은", datetime(2024, 3, 13, 14, 5, 23), "응"),
        ],
    ),
    "chinese_ios": (
        "[2024/3/13 下午2:05:23] 张伟: 你好\n[2024/3/13 上午11:59:01] 李娜: 早上好\n",
        [
            ("张伟", datetime(2024, 3, 13, 14, 5, 23), "你好"),
            ("李娜", datetime(2024, 3, 13, 11, 59, 1), "早上好"),
        ],
    ),
    "chinese_android": (
        "2024/3/13 下午2:05 - 张伟: 你好\n2024/3/13 下午2:06 - 李娜: 你好呀\n",
        [("张伟", datetime(2024, 3, 13, 14, 5), "你好"), ("李娜", datetime(2024, 3, 13, 14, 6), "你好呀")],
    ),
    "japanese_12h": (
        "2024/03/13 午前9:05 - 佐藤: おはよう\n2024/03/13 午後2:06 - 鈴木: こんにちは\n",
        [
            ("佐藤", datetime(2024, 3, 13, 9, 5), "おはよう"),
            ("鈴木", datetime(2024, 3, 13, 14, 6), "こんにちは"),
        ],
    ),
    "japanese_24h": (
        "2024/03/13 14:05 - 佐藤: こんにちは\n[2024/03/13 14:06:10] 鈴木: はい\n",
        [
            ("佐藤", datetime(2024, 3, 13, 14, 5), "こんにちは"),
            ("鈴木", datetime(2024, 3, 13, 14, 6, 10), "はい"),
        ],
    ),
    "french": (
        "13/03/2024 à 14:05 - Marie: Salut\n14/03/2024 à 09:06 - Paul: Coucou\n",
        [("Marie", datetime(2024, 3, 13, 14, 5), "Salut"), ("Paul", datetime(2024, 3, 14, 9, 6), "Coucou")],
    ),
    "finnish": (
        "13.3.2024 klo 14.05 - Matti: Moi\n[13.3.2024 klo 14.06.23] Liisa: Hei\n",
        [("Matti", datetime(2024, 3, 13, 14, 5), "Moi"), ("Liisa", datetime(2024, 3, 13, 14, 6, 23), "Hei")],
    ),
    "arabic": (
        "13\u200f/3\u200f/2024، 2:05 م - أحمد: مرحبا\n13\u200f/3\u200f/2024، 9:06 ص - علي: أهلا\n",
        [("أحمد", datetime(2024, 3, 13, 14, 5), "مرحبا"), ("علي", datetime(2024, 3, 13, 9, 6), "أهلا")],
    ),
    "german": (
        "13.03.24, 14:05 - Anna: Hallo\n13.03.24, 14:06 - Ben: Hi\n",
        [("Anna", datetime(2024, 3, 13, 14, 5), "Hallo"), ("Ben", datetime(2024, 3, 13, 14, 6), "Hi")],
    ),
    "spanish_12h": (
        "13/3/24, 2:05 p. m. - Ana: Hola\n13/3/24, 2:06 p. m. - Luis: Qué tal\n",
        [("Ana", datetime(2024, 3, 13, 14, 5), "Hola"), ("Luis", datetime(2024, 3, 13, 14, 6), "Qué tal")],
    ),
    "russian": (
        "13.03.2024, 14:05 - Иван: Привет\n13.03.2024, 14:06 - Олег: Здорово\n",
        [("Иван", datetime(2024, 3, 13, 14, 5), "Привет"), ("Олег", datetime(2024, 3, 13, 14, 6), "Здорово")],
    ),
    "old_ios_colon": (
        "21/8/19, 11:28:51 PM: Jon Doe: Waste out of wealth\n13.06.18 21.25.15: Alan Smith: Like a Rolex\n",
        [
            ("Jon Doe", datetime(2019, 8, 21, 23, 28, 51), "Waste out of wealth"),
            ("Alan Smith", datetime(2018, 6, 13, 21, 25, 15), "Like a Rolex"),
        ],
    ),
    "portuguese": (
        "13/03/2024 14:05 - João: Olá\n13/03/2024 14:06 - Maria: Oi\n",
        [("João", datetime(2024, 3, 13, 14, 5), "Olá"), ("Maria", datetime(2024, 3, 13, 14, 6), "Oi")],
    ),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_locale_parses_as_a_chat(tmp_path: Path, name: str) -> None:
    text, expected = SAMPLES[name]
    path = tmp_path / "_chat.txt"
    path.write_text(text, encoding="utf-8")
    assert detect(path) == "whatsapp"
    report = ParseReport()
    messages = [m for c in whatsapp.parse(path, ParseOptions(timezone="UTC"), report) for m in c.messages]
    got = [(m.author_name, m.timestamp, m.text) for m in messages]
    assert got == [(who, when.replace(tzinfo=UTC), what) for who, when, what in expected]
    assert not report.skipped


def test_korean_in_seoul_converts_to_utc(tmp_path: Path) -> None:
    path = tmp_path / "_chat.txt"
    path.write_text(SAMPLES["korean_comma"][0], encoding="utf-8")
    (first, _) = [
        m
        for c in whatsapp.parse(path, ParseOptions(timezone="Asia/Seoul"), ParseReport())
        for m in c.messages
    ]
    assert first.timestamp == datetime(2024, 3, 13, 5, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2024年3月13日 14:05 - 张伟: 你好\n2024年3月13日 14:06 - 李娜: 你好呀\n"
        "2024年3月13日 14:07 - 张伟: 好\n",
        "13.03.2024 um 14:05 Uhr - Anna: Hallo\n13.03.2024 um 14:06 Uhr - Ben: Hi\n"
        "13.03.2024 um 14:07 Uhr - Anna: Ok\n",
    ],
)
def test_chat_like_file_in_an_unknown_layout_resembles_a_chat(tmp_path: Path, text: str) -> None:
    """Not parseable, but clearly a chat: ingest reports it as an error instead of reading a document."""
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    assert detect(path) != "whatsapp"
    assert whatsapp.resembles(read_head(path), path)
    with pytest.raises(ExportError):
        list(whatsapp.parse(path, ParseOptions(timezone="UTC"), ParseReport()))


@pytest.mark.parametrize(
    "text",
    [
        "# Meeting notes\n\nWe met on 13.03.2024 at 14:05 and talked.\n",
        "2024-03-13 14:05:01,123 INFO starting\n2024-03-13 14:05:02,001 INFO done\n2024-03-13 14:05:03,5 x\n",
        "Dear Anna,\nthank you for your letter.\n",
    ],
)
def test_prose_and_logs_do_not_resemble_a_chat(tmp_path: Path, text: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    assert not whatsapp.resembles(read_head(path), path)
