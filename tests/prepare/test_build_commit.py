"""The dataset folder is replaced as one: whatever stops a rebuild (Ctrl-C, a full disk, a crash), data/
holds the old dataset whole, or no dataset (no build.json: every reader then says to build), never the new
token rows beside the old build.json and tokenizer (training would read ids of one tokenizer as those of
another, silently)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.files import TMP_SUFFIX
from twinlm.prepare.build import build

OLD_PROMPT = "You are {name}, talking with {others} on {platform}. Old prompt."
NEW_PROMPT = "You are {name}, talking with {others} on {platform}. New prompt."


def _config(model: Path, prompt: str) -> TwinConfig:
    return TwinConfig(name="t", me=["Alex Rivera"], build=BuildConfig(model=str(model), system_prompt=prompt))


def dataset(folder: Path) -> dict[str, str]:
    """Every file of the dataset folder (the tokenizer's too) by its hash; temporary names left out."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != ".build.lock" and not any(TMP_SUFFIX in p for p in path.parts)
    }


class Stop(OSError):
    pass


@contextmanager
def failing_at(call: int) -> Iterator[list[str]]:
    """The `call`-th change to the file system a build makes (a rename, a delete, the tokenizer's save)
    fails as a full disk would; yields the names of the changes made."""
    made: list[str] = []
    real = {
        "replace": os.replace,
        "rename": os.rename,
        "unlink": os.unlink,
        "rmtree": shutil.rmtree,
    }
    real_save = PreTrainedTokenizerBase.save_pretrained

    def counted(name: str, action: Callable[..., object]) -> Callable[..., object]:
        def run(*args: object, **kwargs: object) -> object:
            made.append(name)
            if len(made) == call:
                raise Stop(errno.ENOSPC, "No space left on device (test)")
            return action(*args, **kwargs)

        return run

    with pytest.MonkeyPatch.context() as patch:
        for name, action in real.items():
            patch.setattr(shutil if name == "rmtree" else os, name, counted(name, action))
        patch.setattr(PreTrainedTokenizerBase, "save_pretrained", counted("save_pretrained", real_save))
        yield made


def test_a_rebuild_stopped_at_any_change_leaves_the_old_dataset_or_none_never_a_mix(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model = tokenizer_dir("chatml")
    fresh = tmp_path / "fresh"
    build(_config(model, NEW_PROMPT), corpus, fresh)
    new = dataset(fresh)
    old_folder = tmp_path / "old"
    build(_config(model, OLD_PROMPT), corpus, old_folder)
    # A previous build asked the teacher: its held-out questions belong to it, not to the new dataset.
    (old_folder / "heldout_questions.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    old = dataset(old_folder)
    assert new.keys() < old.keys() and new["build.json"] != old["build.json"]

    seen = set()
    call = 0
    while True:
        call += 1
        data = tmp_path / f"data-{call}"
        shutil.copytree(old_folder, data)
        with failing_at(call) as made:
            try:
                build(_config(model, NEW_PROMPT), corpus, data)
            except Stop:
                stopped = True
            else:
                stopped = False
        found = dataset(data)
        if "build.json" in found:
            assert found in (old, new), f"stopped at change {call} ({made[-1]}): a mix of two datasets"
        seen.add("old" if found == old else "new" if found == new else "none")
        if not stopped:
            assert found == new
            break
        # The next build clears what the stopped one left and writes the new dataset whole.
        build(_config(model, NEW_PROMPT), corpus, data)
        assert dataset(data) == new
        assert not [p for p in data.iterdir() if TMP_SUFFIX in p.name]
    assert seen == {"old", "none", "new"}  # stopped before, within and after putting the files in place


def test_a_rebuild_without_the_teacher_leaves_no_held_out_questions_of_an_older_build(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "heldout_questions.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    build(_config(tokenizer_dir("chatml"), NEW_PROMPT), corpus, data)
    assert not (data / "heldout_questions.jsonl").exists()
