"""Documents (.txt, .md, .pdf, .docx): one record per file, detection, extraction, errors."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import zipfile
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, ParseOptions, ParseReport, Role
from twinlm.sources import detect, documents, whatsapp
from twinlm.sources._common import read_head, stable_id

from testdata import REALDATA

FIX = Path(__file__).parent.parent / "fixtures" / "documents"
MTIME = datetime(2023, 5, 6, 7, 8, 9, tzinfo=UTC)


def run(path: Path, **opts: object) -> tuple[list[Conversation], ParseReport]:
    report = ParseReport()
    return list(documents.parse(path, ParseOptions(**opts), report)), report  # type: ignore[arg-type]


def put(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    os.utime(p, (MTIME.timestamp(), MTIME.timestamp()))
    return p


# ------------------------------------------------------------------ hand-made PDF and DOCX builders


def make_pdf(pages: list[str], info: dict[str, str] | None = None) -> bytes:
    """A minimal valid PDF: Helvetica with WinAnsi encoding, one text line per input line."""
    objs: list[bytes] = [
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"",
    ]
    pages_id, page_ids = 2, []
    for text in pages:
        ops = []
        for n, line in enumerate(text.split("\n")):
            esc = line.encode("cp1252").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
            ops.append(b"BT /F1 12 Tf 72 %d Td (%s) Tj ET" % (720 - 16 * n, esc))
        stream = b"\n".join(ops)
        objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objs.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 1 0 R >> >>"
            b" /Contents %d 0 R >>" % len(objs)
        )
        page_ids.append(len(objs))
    kids = b" ".join(b"%d 0 R" % i for i in page_ids)
    objs[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))
    objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    root = len(objs)
    if info:
        entries = b" ".join(b"/%s (%s)" % (k.encode(), v.encode("latin-1")) for k, v in info.items())
        objs.append(b"<< " + entries + b" >>")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R" % (len(objs) + 1, root)
    out += (b" /Info %d 0 R" % len(objs)) if info else b""
    out += b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


PDF_INFO = {"Author": "Jane Doe", "CreationDate": "D:20240102030405+02'00'"}


@cache
def sample_pdf() -> bytes:
    return make_pdf(["Hello café — “quotes”\nsecond line", "Page two (with parens) \\ back"], PDF_INFO)


@cache
def sample_docx(with_metadata: bool = True) -> bytes:
    import docx

    d = docx.Document()
    d.add_paragraph("Überschrift: Plan für 2024")
    d.add_paragraph("Zweiter Absatz mit Emoji 🎉.")
    table = d.add_table(rows=2, cols=3)
    for r, row in enumerate([("Name", "Stadt", "Land"), ("Zoë", "Kraków", "Polska")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    table.cell(0, 1).merge(table.cell(0, 2))  # a merged cell must not repeat its text
    d.add_paragraph("Nach der Tabelle.")
    if with_metadata:
        d.core_properties.author = "Zoë Author"
        d.core_properties.created = datetime(2022, 3, 4, 5, 6, 7)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def encrypted_pdf(user_password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(sample_pdf())))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


# -------------------------------------------------------------------------------------- text files


def test_markdown_fixture() -> None:
    p = FIX / "notes.md"
    convs, report = run(p)
    (conv,) = convs
    text = p.read_text(encoding="utf-8")
    assert conv.source == "documents" and conv.kind == "document"
    assert conv.id == stable_id("documents", text)
    assert conv.title == "notes.md" and conv.platform_detail == "markdown"
    assert conv.participants == () and conv.system_prompt is None
    (m,) = conv.messages
    assert m.id == f"{conv.id}:0"
    assert (m.author_id, m.author_name, m.kind, m.role) == (
        "document",
        "document",
        Kind.DOCUMENT,
        Role.PARTICIPANT,
    )
    assert m.text == text and "Kraków fahren — mit dem Zug" in m.text and m.text.endswith("日本語\n")
    assert m.timestamp == datetime.fromtimestamp(p.stat().st_mtime, tz=UTC)
    assert (report.conversations, report.messages, report.skipped, report.notes) == (1, 1, {}, {})


def test_text_fixture_and_same_content_same_id(tmp_path: Path) -> None:
    (conv,), _ = run(FIX / "notes.txt")
    assert conv.platform_detail == "text"
    assert conv.messages[0].text.startswith("Notes on sourdough\n\nThe starter needs 100% hydration")
    assert "Crème fraîche" in conv.messages[0].text
    # the same text elsewhere, under another name, with a BOM and CRLF endings: the same record id
    crlf = b"\xef\xbb\xbf" + (FIX / "notes.txt").read_bytes().replace(b"\n", b"\r\n")
    (copy,), _ = run(put(tmp_path, "copy.markdown", crlf))
    assert copy.id == conv.id and copy.messages[0].text == conv.messages[0].text
    assert copy.title == "copy.markdown" and copy.platform_detail == "markdown"
    assert copy.messages[0].timestamp == MTIME


def test_old_mac_line_endings(tmp_path: Path) -> None:
    (conv,), _ = run(put(tmp_path, "mac.txt", b"one\rtwo\r\nthree"))
    assert conv.messages[0].text == "one\ntwo\nthree"


def test_invalid_utf8_names_byte_offset(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not valid UTF-8") as err:
        run(put(tmp_path, "bad.txt", "héllo ".encode() + b"\xff rest"))
    assert err.value.where == "byte 7"


def test_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "_CHUNK", 3)  # cuts every multi-byte character somewhere
    text = "ä€😀 b\r\nc" * 5
    (conv,), _ = run(put(tmp_path, "t.txt", b"\xef\xbb\xbf" + text.encode()))
    assert conv.messages[0].text == text.replace("\r\n", "\n")
    with pytest.raises(ExportError) as err:
        run(put(tmp_path, "bad.txt", "😀😀".encode() + b"\xf0\x9f"))  # cut at the end of the file
    assert err.value.where == "byte 8"
    with pytest.raises(ExportError) as err:
        run(put(tmp_path, "bad2.txt", b"abcd\xe2\x82x"))
    assert err.value.where == "byte 4"


def test_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "MAX_DOCUMENT_CHARS", 10)
    monkeypatch.setattr(documents, "_CHUNK", 4)
    (conv,), report = run(put(tmp_path, "long.txt", b"0123456789abcdef"))
    assert conv.messages[0].text == "0123456789"
    assert report.notes == {"document cut to 10 characters": 1}
    (pdf,), report = run(put(tmp_path, "long.pdf", sample_pdf()))
    assert pdf.messages[0].text == "Hello café"
    assert report.notes == {"document cut to 10 characters": 1}


@pytest.mark.parametrize("content", [b"", b"   \n\r\n\t  ", b"\xef\xbb\xbf\n"])
def test_empty_document_skipped(tmp_path: Path, content: bytes) -> None:
    p = put(tmp_path, "empty.txt", content)
    assert not documents.looks_like(read_head(p), p)  # not claimed: "not a recognised export"
    assert detect(p) is None
    convs, report = run(p)  # but read as a document on request: a counted skip
    assert convs == [] and report.skipped == {"empty document": 1}
    assert report.conversations == 0


# --------------------------------------------------------------------------------------------- PDF


def test_pdf(tmp_path: Path) -> None:
    (conv,), report = run(put(tmp_path, "paper.pdf", sample_pdf()))
    text = "Hello café — “quotes”\nsecond line\n\nPage two (with parens) \\ back"
    assert conv.messages[0].text == text
    assert conv.id == stable_id("documents", text)
    assert conv.platform_detail == "pdf" and conv.title == "paper.pdf"
    assert conv.participants == ("Jane Doe",)
    assert conv.messages[0].author_id == "document"
    assert conv.messages[0].timestamp == datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert report.skipped == {} and report.notes == {}


def test_pdf_without_metadata_uses_mtime_and_local_dates_use_timezone(tmp_path: Path) -> None:
    (conv,), _ = run(put(tmp_path, "a.pdf", make_pdf(["x"])))
    assert conv.participants == () and conv.messages[0].timestamp == MTIME
    naive = make_pdf(["y"], {"CreationDate": "D:20240601120000"})
    (conv,), _ = run(put(tmp_path, "b.pdf", naive), timezone="Asia/Tokyo")
    assert conv.messages[0].timestamp == datetime(2024, 6, 1, 3, 0, tzinfo=UTC)
    (conv,), report = run(put(tmp_path, "c.pdf", make_pdf(["z"], {"CreationDate": "D:2024junk"})))
    assert conv.messages[0].timestamp == MTIME
    assert report.notes == {"unreadable PDF metadata (file time used)": 1}


def test_encrypted_pdf(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="encrypted PDF"):
        run(put(tmp_path, "locked.pdf", encrypted_pdf("secret")))
    # an owner password alone (empty user password) does not stop reading
    (conv,), _ = run(put(tmp_path, "owner.pdf", encrypted_pdf("")))
    assert conv.messages[0].text.startswith("Hello café")


def test_pdf_without_text_is_empty(tmp_path: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    buf = io.BytesIO()
    writer.write(buf)
    convs, report = run(put(tmp_path, "scan.pdf", buf.getvalue()))
    assert convs == [] and report.skipped == {"empty document": 1}


def test_damaged_pdf(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot read PDF"):
        run(put(tmp_path, "x.pdf", b"%PDF-1.4\n garbage"))


def test_pdf_reader_warnings_counted_not_printed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    odd = sample_pdf().replace(b"/WinAnsiEncoding", b"/WinAnsiEncodinX")  # same length: xref intact
    (conv,), report = run(put(tmp_path, "odd.pdf", odd))
    assert conv.messages[0].text.startswith("Hello caf")
    assert report.notes == {"PDF damaged or partly unreadable (reader warnings)": 1}
    out, err = capfd.readouterr()
    assert "encoding" not in out + err


# -------------------------------------------------------------------------------------------- DOCX


def test_docx(tmp_path: Path) -> None:
    (conv,), report = run(put(tmp_path, "plan.docx", sample_docx()))
    assert conv.messages[0].text == (
        "Überschrift: Plan für 2024\n"
        "Zweiter Absatz mit Emoji 🎉.\n"
        "Name\tStadt\nLand\n"  # the merged cell once, holding both paragraphs
        "Zoë\tKraków\tPolska\n"
        "Nach der Tabelle."
    )
    assert conv.platform_detail == "docx" and conv.title == "plan.docx"
    assert conv.participants == ("Zoë Author",)
    assert conv.messages[0].timestamp == datetime(2022, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert conv.messages[0].kind == Kind.DOCUMENT
    assert report.skipped == {} and report.notes == {}


def test_docx_template_defaults_are_not_metadata(tmp_path: Path) -> None:
    (conv,), _ = run(put(tmp_path, "plain.docx", sample_docx(with_metadata=False)))
    assert conv.participants == () and conv.messages[0].timestamp == MTIME


def test_zip_that_is_not_docx(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "hi")
    p = put(tmp_path, "a.docx", buf.getvalue())
    assert not documents.looks_like(read_head(p), p)
    with pytest.raises(ExportError, match="not a DOCX"):
        run(p)


# -------------------------------------------------------------------------------------------- fuzz


@cache
def fuzz_sources() -> list[tuple[str, bytes]]:
    return [
        ("notes.md", (FIX / "notes.md").read_bytes()),
        ("notes.txt", (FIX / "notes.txt").read_bytes()),
        ("doc.pdf", sample_pdf()),
        ("doc.docx", sample_docx()),
    ]


@settings(max_examples=40, deadline=None)
@given(
    index=st.integers(0, 3),
    cut=st.floats(0, 1),
    patches=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
)
def test_fuzz_only_export_errors(index: int, cut: float, patches: list[tuple[float, int]]) -> None:
    name, original = fuzz_sources()[index]
    data = bytearray(original[: int(len(original) * cut)] if cut < 0.9 else original)
    for where, byte in patches:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] = byte
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(bytes(data))
        documents.looks_like(read_head(p), p)
        with contextlib.suppress(ExportError):
            run(p)


@pytest.mark.parametrize(
    "content", [b"\x00\xff\xfe garbage \x80\x81", b"\x89PNG\r\n\x1a\n\x00\x00", b"PK\x03\x04junk"]
)
def test_garbage(tmp_path: Path, content: bytes) -> None:
    p = put(tmp_path, "g.bin", content)
    assert not documents.looks_like(read_head(p), p)
    with pytest.raises(ExportError):
        run(p)


# --------------------------------------------------------------------------------------- detection


def test_detects_fixtures_and_generated(tmp_path: Path) -> None:
    for p in (
        FIX / "notes.md",
        FIX / "notes.txt",
        put(tmp_path, "x.pdf", sample_pdf()),
        put(tmp_path, "x.docx", sample_docx()),
        put(tmp_path, "noext", b"just words\n"),
    ):
        assert documents.looks_like(read_head(p), p), p
        assert detect(p) == "documents", p


@pytest.mark.parametrize(
    "text",
    [
        "[TOC]\n\n# Title\n",
        "[1] Smith, J. (2020).\n",
        "{{< hugo shortcode >}}\nBody\n",
        "[x] done\n[ ] todo\n",
    ],
)
def test_markdown_starting_with_brackets_is_a_document(tmp_path: Path, text: str) -> None:
    p = put(tmp_path, "m.md", text.encode())
    assert documents.looks_like(read_head(p), p)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1}',
        b'  [1, 2, {"b": null}]\n',
        b'{"messages": [{"role": "user"',  # truncated JSON
        b'{"a": "an unterminated string',
        b'{"a": 1}\n{"a": 2}\n',  # JSON Lines nobody claimed
        b"[" * 5000,
        b"\x00\x01\x02\x03" * 100,
        b"\x07\x08\x0e" * 50 + b"text",  # mostly control characters
        b"caf\xe9 latin-1",
        b"\xff\xfeh\x00i\x00",  # UTF-16
    ],
)
def test_rejects_non_documents(tmp_path: Path, data: bytes) -> None:
    p = put(tmp_path, "f.txt", data)
    assert not documents.looks_like(read_head(p), p)


def test_head_cut_inside_a_character(tmp_path: Path) -> None:
    data = b"a" * (64 * 1024 - 1) + "é and more".encode()  # the head ends after the first byte of é
    p = put(tmp_path, "big.txt", data)
    assert documents.looks_like(read_head(p), p)


def _realdata_root() -> Path | None:
    extra = os.environ.get("TWINLM_EXTRA_EXPORTS")
    if extra:
        return Path(extra)
    return REALDATA if REALDATA.is_dir() else None


def test_other_formats_realdata_not_documents() -> None:
    root = _realdata_root()
    files = [p for p in root.glob("*/*") if p.is_file() and p.parent.name != "documents"] if root else []
    if not files:
        pytest.skip("no realdata")
    # JSON exports and datasets are never documents, whatever else claims them
    others = [p for p in files if p.parent.name != "whatsapp"]
    assert [p.name for p in others if documents.looks_like(read_head(p), p)] == []
    # WhatsApp chats are plain text too: the detection order keeps them out
    for p in files:
        if p.parent.name == "whatsapp":
            assert whatsapp.looks_like(read_head(p), p), p
            assert detect(p) == "whatsapp", p


def test_realdata_documents() -> None:
    root = _realdata_root()
    files = sorted(p for p in root.rglob("*") if p.is_file() and detect(p) == "documents") if root else []
    if not files:
        pytest.skip("no documents realdata")
    for p in files:
        convs, report = run(p)
        assert len(convs) + report.skipped["empty document"] == 1, p
        for conv in convs:
            (m,) = conv.messages
            assert m.kind == Kind.DOCUMENT and m.text.strip() and m.timestamp is not None
