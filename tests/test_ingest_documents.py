"""Documents come only from paths given as documents; whatever else an export folder or zip holds is
skipped by name with its reason, and a chat-shaped file that does not parse is an error."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from twinlm.corpus.db import Corpus
from twinlm.errors import ExportError
from twinlm.ingest import DOCUMENT_IN_EXPORT, NOT_AN_EXPORT, ingest
from twinlm.model import ParseOptions

from testdata import EXAMPLES

OPTIONS = ParseOptions(timezone="UTC")
CHATGPT = EXAMPLES / "chatgpt" / "conversations.json"
WHATSAPP = EXAMPLES / "whatsapp" / "WhatsApp Chat with Mom.txt"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
VCARD = "BEGIN:VCARD\nVERSION:3.0\nFN:Landlord Smith\nTEL;TYPE=CELL:+44 7700 900123\nEND:VCARD\n"


def pdf(text: str) -> bytes:
    """A one-page PDF holding `text` (pypdf writes it; the text is in a content stream)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(stream)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def docx(text: str) -> bytes:
    import docx as python_docx

    d = python_docx.Document()
    d.add_paragraph(text)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def sources(corpus: Corpus) -> set[str]:
    return {r[0] for r in corpus.db.execute("SELECT DISTINCT source FROM conversations")}


def skipped(result: object) -> dict[str, str]:
    return {Path(name).name: reason for name, reason in result.skipped}  # type: ignore[attr-defined]


def telegram_html_export(root: Path) -> Path:
    folder = root / "ChatExport_2024-03-13"
    (folder / "css").mkdir(parents=True)
    (folder / "js").mkdir()
    (folder / "images").mkdir()
    (folder / "photos").mkdir()
    (folder / "messages.html").write_text(
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8"/>\n<title>Exported Data</title>\n'
        '<link href="css/style.css" rel="stylesheet"/>\n<script src="js/script.js" type="text/javascript">'
        '</script>\n</head>\n<body onload="CheckLocation();">\n<div class="page_wrap">\n'
        '<div class="page_header">\n<div class="content">\n<div class="text bold">Alice</div>\n</div>\n'
        '</div>\n<div class="history">\n<div class="message default clearfix" id="message1">\n'
        '<div class="body">\n<div class="from_name">Alice</div>\n<div class="text">hi there</div>\n'
        "</div>\n</div>\n</div>\n</div>\n</body>\n</html>\n",
        encoding="utf-8",
    )
    (folder / "css" / "style.css").write_text("body {\n  margin: 0;\n  font: 12px/18px 'Open Sans';\n}\n")
    (folder / "js" / "script.js").write_text("function CheckLocation() {\n  return true;\n}\n")
    (folder / "images" / "back.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    (folder / "photos" / "photo_1.jpg").write_bytes(JPEG)
    return folder


def test_telegram_html_export_folder_adds_no_document(tmp_path: Path) -> None:
    folder = telegram_html_export(tmp_path)
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([folder], corpus, OPTIONS)
        assert not result.failed
        assert corpus.count("messages") == 0 and "documents" not in sources(corpus)
        why = skipped(result)
        assert set(why) == {"messages.html", "style.css", "script.js", "back.png", "photo_1.jpg"}
        assert "Telegram" in why["messages.html"] and "JSON" in why["messages.html"]
        assert why["style.css"] == why["script.js"] == NOT_AN_EXPORT
        assert result.summary()["skipped_files"][0] == {
            "file": str(folder / "css" / "style.css"),
            "reason": why["style.css"],
        }


def test_whatsapp_media_zip_adds_the_chat_and_no_attachment(tmp_path: Path) -> None:
    archive = tmp_path / "WhatsApp Chat - Mom.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(WHATSAPP, "_chat.txt")
        z.writestr("00000012-Lease 2024.pdf", pdf("Tenancy agreement between Alex Rivera and Landlord Smith"))
        z.writestr("00000013-Landlord Smith.vcf", VCARD)
        z.writestr("00000014-PHOTO-2024-06-12-19-02-11.jpg", JPEG)
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([archive], corpus, OPTIONS)
        assert not result.failed
        assert sources(corpus) == {"whatsapp"}
        texts = " ".join(r[0] for r in corpus.db.execute("SELECT text FROM messages"))
        assert "Tenancy" not in texts and "+44 7700" not in texts
        why = skipped(result)
        assert set(why) == {
            "00000012-Lease 2024.pdf",
            "00000013-Landlord Smith.vcf",
            "00000014-PHOTO-2024-06-12-19-02-11.jpg",
        }
        assert "inside an export" in why["00000012-Lease 2024.pdf"]


def test_chatgpt_zip_reads_conversations_json_only(tmp_path: Path) -> None:
    archive = tmp_path / "chatgpt-export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(CHATGPT, "conversations.json")
        z.writestr(
            "chat.html", "<html><head><title>ChatGPT Data Export</title></head><body>hi</body></html>\n"
        )
        z.writestr("user.json", json.dumps({"id": "user-1", "email": "alex@example.com"}))
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([archive], corpus, OPTIONS)
        assert not result.failed
        assert sources(corpus) == {"chatgpt"}
        assert set(skipped(result)) == {"chat.html", "user.json"}


def test_stray_files_in_an_export_folder_are_named_with_their_reason(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "WhatsApp Chat with Mom.txt").write_bytes(WHATSAPP.read_bytes())
    (folder / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1"\n')
    (folder / "contacts.csv").write_text("name,phone\nMom,+1 555 0100\n")
    (folder / "README.md").write_text("# My exports\n\nSome notes.\n")
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([folder], corpus, OPTIONS)
        assert not result.failed
        assert sources(corpus) == {"whatsapp"}
        why = skipped(result)
        assert set(why) == {"pyproject.toml", "contacts.csv", "README.md"}
        assert why == {
            "pyproject.toml": NOT_AN_EXPORT,
            "contacts.csv": NOT_AN_EXPORT,
            "README.md": DOCUMENT_IN_EXPORT,
        }
        assert "--documents" in DOCUMENT_IN_EXPORT


def test_documents_come_from_document_paths(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "plan.md").write_text("# Plan\n\nClimb more, fall less.\n")
    (notes / "sub" / "diary.txt").write_text("Today I climbed a 6a.\n")
    (notes / "lease.pdf").write_bytes(pdf("The rent is due on the first day"))
    (notes / "letter.docx").write_bytes(docx("Dear landlord, the heating is broken."))
    (notes / "data.csv").write_text("a,b\n1,2\n")
    (notes / "photo.jpg").write_bytes(JPEG)
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([], corpus, OPTIONS, documents=[notes])
        assert not result.failed
        assert sorted((Path(f.name).name, f.format) for f in result.files) == [
            ("diary.txt", "documents"),
            ("lease.pdf", "documents"),
            ("letter.docx", "documents"),
            ("plan.md", "documents"),
        ]
        texts = " ".join(r[0] for r in corpus.db.execute("SELECT text FROM messages"))
        assert "rent is due" in texts and "heating is broken" in texts
        assert set(skipped(result)) == {"data.csv", "photo.jpg"}


def test_a_documents_folder_inside_an_export_folder_is_read_once_as_documents(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    (folder / "documents").mkdir(parents=True)
    (folder / "WhatsApp Chat with Mom.txt").write_bytes(WHATSAPP.read_bytes())
    (folder / "documents" / "plan.md").write_text("# Plan\n\nClimb more.\n")
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([folder], corpus, OPTIONS, documents=[folder / "documents"])
        assert not result.failed and not result.skipped
        assert sorted(f.format or "" for f in result.files) == ["documents", "whatsapp"]


def test_a_document_named_as_an_export_is_an_error_naming_the_flag(tmp_path: Path) -> None:
    note = tmp_path / "plan.md"
    note.write_text("# Plan\n\nClimb more.\n")
    with Corpus(tmp_path / "corpus.db") as corpus:
        (failed,) = ingest([note], corpus, OPTIONS).failed
        assert failed.error is not None and "--documents" in failed.error and "\n" not in failed.error
        assert corpus.count("messages") == 0


@pytest.mark.parametrize("inside", [False, True])
def test_a_chat_in_an_unknown_layout_is_an_error_not_a_document(tmp_path: Path, inside: bool) -> None:
    chat = "2024年3月13日 14:05 - 张伟: 你好\n2024年3月13日 14:06 - 李娜: 你好呀\n" * 2
    folder = tmp_path / "exports"
    folder.mkdir()
    path = folder / "chat.txt"
    path.write_text(chat, encoding="utf-8")
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([folder if inside else path], corpus, OPTIONS)
        (failed,) = result.failed
        assert failed.name == str(path)
        assert "WhatsApp" in (failed.error or "") and "\n" not in (failed.error or "")
        assert corpus.count("messages") == 0


def test_document_paths_must_exist(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus, pytest.raises(ExportError, match="no such file"):
        ingest([], corpus, OPTIONS, documents=[tmp_path / "nope"])


def test_cli_documents_flag_config_list_and_skips_in_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from twinlm.cli import app

    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "plan.md").write_text("# Plan\n\nClimb more.\n")
    (notes / "data.csv").write_text("a,b\n1,2\n")
    exports = telegram_html_export(tmp_path)
    result = runner.invoke(app, ["ingest", "-w", str(ws), str(exports), "--documents", str(notes), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [(Path(f["file"]).name, f["format"]) for f in summary["files"]] == [("plan.md", "documents")]
    named = {Path(s["file"]).name: s["reason"] for s in summary["skipped_files"]}
    assert {"messages.html", "style.css", "script.js", "data.csv"} <= set(named)
    # Without paths, ingest.documents from twin.yaml is read (relative to the workspace).
    config = ws / "twin.yaml"
    config.write_text(config.read_text().replace("documents: []", f"documents: [{notes}]", 1))
    result = runner.invoke(app, ["ingest", "-w", str(ws), "--json"])
    assert result.exit_code == 0, result.output
    assert [f["format"] for f in json.loads(result.stdout)["files"]] == ["documents"]


def test_cli_says_once_which_zone_local_times_were_read_in(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from twinlm.cli import app

    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    for name in ("WhatsApp Chat with Mom.txt", "WhatsApp Chat with Dad.txt"):
        (tmp_path / name).write_bytes(WHATSAPP.read_bytes())
    paths = [str(tmp_path / "WhatsApp Chat with Mom.txt"), str(tmp_path / "WhatsApp Chat with Dad.txt")]
    result = runner.invoke(app, ["ingest", "-w", str(ws), *paths], env={"TZ": "Europe/Berlin"})
    assert result.exit_code == 0, result.output
    assert " ".join(result.stdout.split()).count("were read in Europe/Berlin, this machine's time zone") == 1
    result = runner.invoke(app, ["ingest", "-w", str(ws), *paths, "--json"], env={"TZ": "Europe/Berlin"})
    assert json.loads(result.stdout)["assumed_timezone"] == "Europe/Berlin"
    result = runner.invoke(app, ["ingest", "-w", str(ws), *paths, "--timezone", "Asia/Seoul", "--json"])
    assert json.loads(result.stdout)["assumed_timezone"] is None
