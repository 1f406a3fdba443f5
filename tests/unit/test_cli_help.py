"""--help of every command says what that command does, whole: `etc-pipeline <cmd> --help` shows its own usage and
the first paragraph of its docstring; each pipelines/*.py shows its own first line (not another stage's)."""
import importlib
import re

import pytest

from etc_core import cli

STAGES = {"train_teacher": "teacher", "train_baseline": "baseline", "train_student": "student"}


def _help(func, capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        func([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_subcommand_help_is_its_own_and_whole(name, capsys):
    text = _help(cli.COMMANDS[name], capsys)
    assert text.startswith(f"usage: etc-pipeline {name} ")
    summary = " ".join(cli.COMMANDS[name].__doc__.split("\n\n")[0].split())
    assert summary.endswith(".") and summary in text


@pytest.mark.parametrize("module", ["full", "precompute_flow", "sweep", *STAGES])
def test_pipeline_help_describes_that_stage(module, capsys):
    mod = importlib.import_module(f"pipelines.{module}")
    first = mod.__doc__.splitlines()[0]
    text = _help(mod.main, capsys)
    assert first.endswith(".") and " ".join(first.split()) in text
    if module in STAGES:  # the three share train_teacher.main: each shows its own docstring
        assert re.search(rf"\b{STAGES[module]}\b", first)
        teacher = " ".join(importlib.import_module("pipelines.train_teacher").__doc__.splitlines()[0].split())
        assert (teacher in text) == (module == "train_teacher")
