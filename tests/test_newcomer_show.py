"""`twinlm show` names the pieces a session is split into under build.max_length as the build does
(`build --preview`'s ID#piece-K/N over the dataset's rows), with the turns each trains (issue 12, item 6)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from test_newcomer_preview import invoke
from test_run import make_workspace


def test_show_lists_each_piece_of_a_split_session_under_the_builds_id(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    config = yaml.safe_load((ws / "twin.yaml").read_text(encoding="utf-8"))
    config["build"]["max_length"] = 128  # each session (~170 tokens) is split into pieces
    (ws / "twin.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    invoke("ingest", "-w", str(ws))
    invoke("build", "-w", str(ws))

    data = ws / "data"
    shown = json.loads(invoke("show", "1", "-w", str(ws), "--json"))
    built = [json.loads(line) for line in (data / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    mine = [s["id"] for s in built if s["conversation"] == shown["key"]]
    rows = Counter(
        i
        for split in ("train", "eval")
        for i in pq.read_table(data / f"{split}.parquet")["sample_id"].to_pylist()
    )
    expected = {
        i: [i] if rows[i] == 1 else [f"{i}#piece-{k}/{rows[i]}" for k in range(1, rows[i] + 1)] for i in mine
    }
    samples = {s["id"]: s for part in shown["sessions"] for s in part["samples"] if s["kept"]}
    assert sorted(samples) == sorted(mine)
    assert any(len(ids) > 1 for ids in expected.values())  # the test is about split sessions
    for sample_id, ids in expected.items():
        sample = samples[sample_id]
        assert [p["id"] for p in sample["pieces"]] == ids
        # Each trained turn is trained by exactly one piece.
        trained = [i for i, t in enumerate(sample["turns"]) if t["trained"]]
        assert sorted(t for p in sample["pieces"] for t in p["trained_turns"]) == trained

    text = invoke("show", "1", "-w", str(ws))
    assert "\x1b[" not in text
    for sample_id, ids in expected.items():
        if len(ids) > 1:
            for piece in samples[sample_id]["pieces"]:
                turns = samples[sample_id]["turns"]
                messages = ", ".join(str(m) for t in piece["trained_turns"] for m in turns[t]["messages"])
                assert f"piece {piece['id']}: trains messages {messages}\n" in text, text
    # `build --preview` names this conversation's rows the same way.
    preview = invoke("build", "-w", str(ws), "--preview", "50")
    previewed = set(re.findall(rf"{re.escape(shown['key'])}#\d+#piece-\d+/\d+", preview))
    assert previewed and previewed <= {p for ids in expected.values() for p in ids}
