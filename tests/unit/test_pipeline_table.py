"""The pipeline's table: the student against its equal-step control first, against the baseline second; and
`--force control` without a control to redo is refused in one line, exit 2."""
import pytest

from etc_core.config import load_config
from etc_core.errors import ConfigError
from etc_core.pipeline import comparisons, training_stages
from etc_core.preflight import check_full
from tests.conftest import REPO


def _row(model, miou, tc_noc, mvc8, arch="pspnet18_slim"):
    return {"model": model, "arch": arch, "miou": miou, "tc_noc": tc_noc, "mvc8": mvc8}


ROWS = [_row("teacher:etc-teacher/1", 60.0, 80.0, 95.0), _row("baseline:etc-baseline-x/1", 48.0, 66.0, 90.0),
        _row("student:etc-student-x/1", 50.0, 70.0, None), _row("control:etc-control-x/1", 50.5, 68.25, 91.0),
        _row("ground truth", 100.0, 98.0, 100.0, arch="reference")]


def test_the_equal_step_difference_comes_first_and_the_unequal_one_says_so():
    first, second = comparisons(ROWS, warm=True)
    assert first["name"] == "student - control" and first["delta"] == {"miou": -0.5, "tc_noc": 1.75}  # no mvc8
    assert first["line"] == ("student - control: TC-noc +1.75, mIoU -0.50   "
                             "[equal steps (the same init and steps without the ETC terms)]")
    assert second["name"] == "student - baseline" and second["delta"] == {"miou": 2.0, "tc_noc": 4.0}
    assert "[secondary, unequal steps" in second["line"]
    assert "unequal" not in comparisons(ROWS, warm=False)[1]["line"]  # a student not fine-tuned from it


def test_without_a_control_only_the_baseline_comparison_is_printed():
    rows = [r for r in ROWS if not r["model"].startswith("control")]
    assert [c["name"] for c in comparisons(rows, warm=True)] == ["student - baseline"]
    assert comparisons(rows[:1], warm=True) == []


def test_the_control_trains_when_asked_and_cannot_be_forced_otherwise():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.root=/nonexistent/d", "shards.uri=/nonexistent/s"])
    assert training_stages(cfg) == ("teacher", "baseline", "student", "control")
    off = load_config(None, ["pipeline.control=false"])
    assert "control" not in training_stages(off)
    with pytest.raises(ConfigError, match=r"^--force control: pipeline.control is false") as e:
        check_full(off, ("control",))
    assert e.value.exit_code == 2
