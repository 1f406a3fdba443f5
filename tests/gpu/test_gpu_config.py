"""configs/gpu.yaml on a machine with a GPU: the whole pipeline at tiny sizes (random flow weights: no download), the
flow model, training (AMP) and the evaluation on CUDA. Without a GPU, tests/integration/test_entry_configs.py checks
the one line it stops with."""
import mlflow
import pytest
import torch

from tests.conftest import TINY_DATA, run_dirs, run_python

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                    reason="needs CUDA")]


def test_gpu_config_runs_every_stage_on_the_gpu(tmp_path):
    tiny = [*TINY_DATA, "data.height=128", "data.width=192", f"data.root={tmp_path}/data",
            f"shards.uri={tmp_path}/shards", *run_dirs(tmp_path), "flow.weights=none", "flow.batch_size=2",
            "train.max_steps=2", "train.steps_per_epoch=2", "train.batch_size=2", "train.val_batch_size=2",
            "train.crop=null", "train.cpus_per_worker=1", "train.loader_workers=0", "pipeline.eval_batch_size=2"]
    proc = run_python("pipelines/full.py", "--config", "configs/gpu.yaml", *tiny, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stages run: flow, teacher, baseline, student, evaluate" in proc.stdout
    assert "flow actor(s) of raft_small (weights none): 1 CPU, 1 GPU each" in proc.stderr  # the flow on the GPU
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("etc-gpu").experiment_id])
    trained = [r for r in runs if r.data.tags.get("etc.stage") in ("teacher", "baseline", "student")]
    assert len(trained) == 3 and all(r.data.params["train.use_gpu"] == "True" for r in trained)
    assert all(r.data.params["train.amp"] == "True" for r in trained)
