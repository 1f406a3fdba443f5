"""etc_core/section.py: the one hash, flattener and dotted-key setter that every config user goes through."""
from __future__ import annotations

import hashlib

import pytest

from etc_core import config, section
from etc_core.errors import ConfigError
from etc_core.flow import stage
from etc_core.sweep import space


def test_digest_is_sha256_of_sorted_json_and_every_hash_goes_through_it():
    payload = {"b": [1, 2], "a": {"y": None, "x": "s"}}
    expected = hashlib.sha256(b'{"a": {"x": "s", "y": null}, "b": [1, 2]}').hexdigest()
    assert section.digest(payload, 16) == expected[:16] == stage.config_hash(payload)
    assert section.digest(payload, 64) == expected
    cfg = config.EtcConfig()
    assert config.config_hash(cfg.data, cfg.train) == section.digest(
        ["DataConfig", "TrainConfig", section.hash_dump(cfg.data), section.hash_dump(cfg.train)], 12)


def test_hash_dump_omits_defaults_at_every_depth():
    cfg = config.load_config(None, ["student.train.max_steps=5"])
    assert "train" not in section.hash_dump(config.EtcConfig().student)
    assert section.hash_dump(cfg.student)["train"] == {"max_steps": 5}
    whole = section.hash_dump(config.EtcConfig())  # the sections inside a hashed model omit theirs too
    assert "train" not in whole["student"] and "placement_strategy" not in whole["train"]
    assert "placement_strategy" not in section.hash_dump(config.EtcConfig().train)


def test_a_loss_field_added_later_leaves_every_stage_key_as_it_was():
    from typing import ClassVar

    from etc_core.losses.etc import StudentLossConfig
    from etc_core.train.config import StudentConfig

    class WithNewTerm(StudentLossConfig):  # what adding a term's weight to LossConfig does
        HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("new_weight",)
        new_weight: float = 0.0

    class Student(StudentConfig):
        loss: WithNewTerm = WithNewTerm()

    Student.__name__ = "StudentConfig"  # the same section name in the hashed payload
    assert config.config_hash(Student()) == config.config_hash(StudentConfig())
    assert config.config_hash(Student(loss=WithNewTerm(new_weight=0.5))) != config.config_hash(StudentConfig())


def test_flatten_models_and_trees_alike():
    cfg = config.load_config(None, ["data.height=64"])
    flat = section.flatten(cfg)
    assert flat["data.height"] == 64 and flat == section.flatten(cfg.model_dump())
    assert section.flatten({"a": {"b": 1, "c": {}}, "d": 2}, "x.") == {"x.a.b": 1, "x.d": 2}


def test_first_difference_names_the_first_key_in_sorted_order():
    assert section.first_difference({"data": {"height": 40, "width": 9}}, {"data": {"height": 96, "width": 8}}) \
        == ("data.height", 40, 96)
    assert section.first_difference({"a": 1}, {"a": 1, "b": 2}) == ("b", None, 2)
    assert section.first_difference({"a": 1}, {"a": 1}) == ("?", None, None)


def test_set_dotted_creates_sections_or_wants_known_keys():
    tree: dict = {"data": {"height": 1}}
    section.set_dotted(tree, "train.lr", 0.1, "override train.lr=0.1")
    assert tree == {"data": {"height": 1}, "train": {"lr": 0.1}}
    with pytest.raises(ConfigError, match=r"^override x: data.height is not a config section$"):
        section.set_dotted(tree, "data.height.x", 1, "override x")
    with pytest.raises(ConfigError, match=r"^data.heigth: unknown key \(did you mean height\?\)$"):
        section.set_dotted(tree, "data.heigth", 1, "data.heigth", create=False)


def test_one_config_editor():
    base = config.EtcConfig()
    edited = config.apply_values(base, {"train.lr": 0.002})
    assert edited.train.lr == 0.002 and base.train.lr != 0.002 and type(edited) is config.EtcConfig
    assert space.apply_values(base, {"train.lr": 0.002}) == edited
    assert config.apply_values is section.with_values
