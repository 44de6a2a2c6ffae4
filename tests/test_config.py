from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from twinlm.config import IngestConfig, TwinConfig, load_config, reference_markdown, render_config
from twinlm.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "twin.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_rendered_config_round_trips_and_documents_every_field(tmp_path: Path) -> None:
    config = TwinConfig(
        name="alex",
        me=["Alex", "discord:42"],
        people={"Sam": ["sammy", "+1 555 0100"]},
        ingest=IngestConfig(timezone="Europe/Berlin", media="drop"),
    )
    text = render_config(config)
    assert load_config(_write(tmp_path, text)) == config
    for model in (TwinConfig, IngestConfig):
        for name, info in model.model_fields.items():
            assert f"{name}:" in text
            first_words = " ".join((info.description or "").split()[:4])
            assert first_words in " ".join(line.lstrip("# ") for line in text.splitlines())


def test_defaults_render_as_valid_yaml(tmp_path: Path) -> None:
    text = render_config(TwinConfig())
    assert isinstance(yaml.safe_load(text), dict)
    assert load_config(_write(tmp_path, text)) == TwinConfig()


def test_unknown_setting_names_line_field_and_valid_choices(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: a\ningest:\n  media: drop\n  timezon: UTC\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert f"{path}:4: ingest.timezon: unknown setting" in message
    assert "timezone" in message and "max_message_chars" in message


def test_bad_choice_names_the_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "ingest:\n  media: keep\n")
    with pytest.raises(ConfigError, match=r":2: ingest\.media: .*'placeholder'.*'drop'.*got 'keep'"):
        load_config(path)


def test_wrong_type_and_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":3: ingest\.max_message_chars: .*greater than or equal to 100"):
        load_config(_write(tmp_path, "name: x\ningest:\n  max_message_chars: 5\n"))
    with pytest.raises(ConfigError, match=r":1: me: .*list"):
        load_config(_write(tmp_path, "me: 12\n"))


def test_unknown_time_zone_suggests_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ingest\.timezone: unknown time zone 'Mars/Base'.*IANA"):
        load_config(_write(tmp_path, "ingest:\n  timezone: Mars/Base\n"))


def test_alias_owned_by_two_people_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":2: people: alias 'Bob' of 'Bob' also belongs to 'me'"):
        load_config(_write(tmp_path, "me: [bob]\npeople:\n  Bob: [Bob]\n"))


def test_invalid_yaml_and_wrong_top_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"twin\.yaml:2: invalid YAML"):
        load_config(_write(tmp_path, "name: a\n  me: [\n"))
    with pytest.raises(ConfigError, match=r"twin\.yaml:1: expected a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    assert load_config(_write(tmp_path, "")) == TwinConfig()


def test_docs_reference_matches_the_model() -> None:
    docs = Path(__file__).parent.parent / "docs" / "configuration.md"
    assert docs.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/configuration.md is stale: run `twinlm config --markdown > docs/configuration.md`"
    )
