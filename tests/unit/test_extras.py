"""The heavy optional tools live in pyproject's extras; a command that needs a missing one says which, in one line."""
from __future__ import annotations

import sys
import tomllib

import pytest

from etc_core.errors import ConfigError
from etc_core.extras import EXTRAS, require
from tests.conftest import REPO


def test_every_optional_module_is_in_its_extra_and_not_in_the_core():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {dep.split("=")[0].split("<")[0].split(">")[0].split("[")[0].strip() for dep in project["dependencies"]}
    extras = project["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert module in extras[extra] and module not in core, module
    assert set(extras["infer"]) == {"av", "onnxscript", "onnxruntime"} and extras["sweep"] == ["optuna"]


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_a_missing_extra_is_one_line_naming_it(module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError, as when not installed
    with pytest.raises(ConfigError) as err:
        require(module, "the feature")
    message = str(err.value)
    assert "\n" not in message and f"etc-pipeline[{EXTRAS[module]}]" in message and module in message


def test_the_commands_that_need_an_extra_ask_for_it_before_any_work(tmp_path, monkeypatch):
    from etc_core.config import load_config
    from etc_core.infer.export import export_model
    from etc_core.infer.video import open_frames
    from etc_core.sweep.space import check_space

    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ConfigError, match=r"clip\.mp4 needs av, from the \[infer\] extra"):
        open_frames(str(tmp_path / "clip.mp4"))
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ConfigError, match=r"--format onnx needs onnxscript"):
        export_model(None, {}, tmp_path / "out", formats=("onnx",))
    assert not (tmp_path / "out").exists()  # nothing half-written
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match=r"sweep.search=optuna .* needs optuna, from the \[sweep\] extra"):
        check_space(load_config(REPO / "configs" / "demo.yaml", ["sweep.search=optuna"]))
    check_space(load_config(REPO / "configs" / "demo.yaml", ["sweep.search=random"]))  # random needs nothing more
