import pytest

from etc_core.config import EtcConfig, flatten, load_config
from etc_core.errors import ConfigError
from tests.conftest import REPO


def test_demo_config_loads_and_overrides_apply(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.height=64", "ray.num_cpus=2", f"data.root={tmp_path}/d"])
    assert isinstance(cfg, EtcConfig)
    assert cfg.data.height == 64 and cfg.ray.num_cpus == 2
    assert cfg.data.root == str(tmp_path / "d")
    assert flatten(cfg)["data.height"] == 64


def test_relative_and_env_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ETC_TEST_DIR", "/opt/x")
    assert load_config(None, ["data.root=rel/dir"]).data.root == str(tmp_path / "rel" / "dir")
    assert load_config(None, ["data.root=${ETC_TEST_DIR}/d"]).data.root == "/opt/x/d"
    assert load_config(None, ["data.root=s3://bucket/data"]).data.root == "s3://bucket/data"
    with pytest.raises(ConfigError, match=r"data.root: .*ETC_NOT_SET_ANYWHERE is not set"):
        load_config(None, ["data.root=${ETC_NOT_SET_ANYWHERE}/d"])


@pytest.mark.parametrize("text, message", [
    ("data:\n  heigth: 32\n", r"bad.yaml: line 2: data.heigth: unknown key \(did you mean height\?\)"),
    ("dataa:\n  height: 32\n", r"bad.yaml: line 1: dataa: unknown key \(did you mean data\?\)"),
    ("data:\n  height: tall\n", r"bad.yaml: line 2: data.height: Input should be a valid integer.*'tall'"),
    ("data:\n  height: -4\n", r"bad.yaml: line 2: data.height: Input should be greater than or equal to 16"),
    ("data:\n  height: 32\nstudent:\n  train:\n    lr: 0.1\n    max_stps: 3\n",
     r"bad.yaml: line 4: student.train: Value error, unknown train key 'max_stps'"),
    ("shards:\n  k:\n    - 1\n    - x\n", r"bad.yaml: line 4: shards.k.1: Input should be a valid integer"),
    ("data: [1, 2\n", r"bad.yaml: line \d+ invalid YAML"),
    ("- 1\n", r"bad.yaml: top level must be a mapping"),
])
def test_file_errors_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("data.widht=3", r"override data.widht=3: data.widht: unknown key \(did you mean width\?\)"),
    ("data.num_classes=many", r"override data.num_classes=many: data.num_classes: Input should be a valid integer"),
    ("data.height.x=3", r"override data.height.x=3: data.height"),
    ("data", r"expected section.key=value"),
    ("dta.height=72", r"^override dta.height=72: dta: unknown key \(did you mean data\?\)"),  # a section the file lacks
    ("student.train.max_stps=1", r"^override student.train.max_stps=1: student.train: Value error, unknown train key"),
])
def test_override_errors_name_the_override(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs" / "demo.yaml", ["data.height=64", override])


def test_override_under_a_section_the_file_has_is_named_not_the_file(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("student:\n  train:\n    lr: 0.1\n")  # valid: the bad key comes from the second override
    with pytest.raises(ConfigError, match=r"^override student.train.max_stps=1: student.train: .*'max_stps'"):
        load_config(path, ["student.train.lr=0.2", "student.train.max_stps=1"])
    path.write_text("student:\n  train:\n    max_stps: 1\n")  # now the file is at fault, and an override is given
    with pytest.raises(ConfigError, match=r"^.*ok.yaml: line 2: student.train: .*'max_stps'"):
        load_config(path, ["student.train.lr=0.2"])


def test_missing_file():
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config("/no/such/dir/nope.yaml")


@pytest.mark.parametrize("args, fragment", [
    (["--config", "/no/such/nope.yaml"], "nope.yaml: config file not found"),
    (["--config", "configs/demo.yaml", "data.colour=red"], "override data.colour=red: data.colour: unknown key"),
    (["--config", "configs/demo.yaml", "data.height=abc"], "data.height: Input should be a valid integer"),
])
def test_entry_point_prints_one_line_and_exits_2(args, fragment, capsys, monkeypatch):
    # in-process (a process each took ~8 s of imports); tests/reliability/test_bad_input.py runs real processes
    from etc_core.entry import run_entry
    from pipelines.full import main

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        run_entry(main, args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ConfigError: ") and fragment in lines[0], err
    assert out == ""
