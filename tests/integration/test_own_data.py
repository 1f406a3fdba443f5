"""docs/own_data.md end to end: a folder of one's own labelled videos, checked, through pipelines/full.py with
configs/own_data.yaml (DIS flow) to a registered champion, scored on the folder and used to predict a clip."""
from __future__ import annotations

import mlflow
import pytest
from PIL import Image

from etc_core.cli import main as cli_main
from etc_core.entry import run_entry
from tests.conftest import REPO
from tests.real_trees import make_folder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the config's sizes cut to a few seconds a stage; its paths, flow source and data.resize (0.5) are kept; the
# student trains from its own initialisation, not from a baseline (each Ray Train stage costs tens of seconds here;
# the baseline warm start runs in test_doc_examples and test_job_submit's configs/demo.yaml)
TINY = ["teacher.pretrained=none", "student.pretrained=none", "train.max_steps=2", "train.steps_per_epoch=2",
        "train.batch_size=2", "train.crop=null", "train.pictures=0", "pipeline.baseline=false",
        "student.init_from=null"]


def _run(main, argv: list[str], capsys) -> str:
    """main(argv) as its console script runs it (etc-pipeline's main, or run_entry around an entry point's)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err[-3000:]
    return out


def test_a_folder_of_own_videos_to_a_registered_model(ray_local, tmp_path, monkeypatch, capsys):
    from pipelines.full import main

    full = lambda argv: run_entry(main, argv)  # noqa: E731 (as `python pipelines/full.py ARGS` runs it)

    make_folder(tmp_path / "my_videos", h=64, w=96)  # 3 clips of 6 frames, 2 classes; 32x48 after data.resize
    monkeypatch.chdir(tmp_path)  # the config's relative paths (my_videos, runs/own_data/...) are taken from here
    config = str(REPO / "configs" / "own_data.yaml")

    out = _run(cli_main, ["check-dataset", "--kind", "folder", "--root", "my_videos"], capsys)
    assert "train: 2 sequences, 12 frames, 3 labelled frames (2 clips)" in out

    out = _run(full, ["--config", config, "data.root=my_videos", *TINY], capsys)
    assert "stages run: flow, teacher, student, evaluate; reused: -" in out
    assert "shards " + str(tmp_path / "runs/own_data/shards") + " [val], flow shards, 32x48" in out
    store = f"sqlite:///{tmp_path}/runs/own_data/mlflow.db"
    client = mlflow.MlflowClient(store)
    for name in ("etc-teacher", "etc-student-lraspp_mobilenetv3"):
        assert client.get_model_version_by_alias(name, "champion").version in (1, "1")
    manifest = (tmp_path / "runs/own_data/shards/manifest.json").read_text()
    assert '"class_names": [\n  "background",\n  "thing"\n ]' in manifest and '"source": "dis"' in manifest

    champion = "models:/etc-student-lraspp_mobilenetv3@champion"
    out = _run(cli_main, ["evaluate", "--config", config, "--data", "my_videos", "--split", "val", "--flow-model", "dis",
                          "--model", champion], capsys)
    assert f"data {tmp_path}/my_videos [val], flow dis:medium, 32x48" in out
    assert out.splitlines()[3].startswith(champion + "  lraspp_mobilenetv3"), out  # the row after the header
    out = _run(cli_main, ["predict", "--config", config, "--model", champion, "--input", "my_videos/val/park/frames",
                          "--out", "predicted/", "--size", "32x48"], capsys)
    masks = sorted((tmp_path / "predicted" / "masks").iterdir())
    assert [m.name for m in masks] == [f"{i:06d}.png" for i in range(6)]
    assert Image.open(masks[0]).size == (96, 64) and (tmp_path / "predicted" / "overlay.mp4").is_file(), out
