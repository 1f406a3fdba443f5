"""The champion rule (etc_core/tracking/registry.py) on a real SQLite registry, branch by branch: no champion yet, a
worse and a better version, a tie, min_improvement, val_score, a champion without the metric the rule needs."""
import mlflow
import pytest

from etc_core.config import RegistryConfig
from etc_core.tracking.registry import CHAMPION, _beats_champion, score

pytestmark = pytest.mark.integration

NAME = "etc-rule"


@pytest.fixture
def client(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model(NAME)
    return client


def _version(client, **metrics) -> str:
    """A version whose metrics are `metric.*` tags (the form versions without a LoggedModel keep them in)."""
    mv = client.create_model_version(NAME, source="file:///nowhere", tags={f"metric.{k}": str(v)
                                                                         for k, v in metrics.items()})
    return mv.version


def _crown(client, version: str) -> None:
    client.set_registered_model_alias(NAME, CHAMPION, version)


def test_first_version_is_champion_then_only_a_better_one_takes_over(client):
    rule = RegistryConfig()  # val_miou, min_improvement 0
    assert _beats_champion(client, NAME, {"val_miou": 10.0}, rule)  # no champion yet
    _crown(client, _version(client, val_miou=50.0))
    assert not _beats_champion(client, NAME, {"val_miou": 49.9}, rule)  # worse: candidate
    assert _beats_champion(client, NAME, {"val_miou": 50.0}, rule)  # a tie takes over (>=, the newer wins)
    assert _beats_champion(client, NAME, {"val_miou": 61.0}, rule)
    better = _version(client, val_miou=61.0)
    _crown(client, better)  # an alias names one version: the old champion now carries none
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == better
    assert client.get_model_version(NAME, "1").aliases == []
    assert not _beats_champion(client, NAME, {"val_miou": 55.0}, rule)  # compared with the new champion


def test_min_improvement_val_score_and_a_champion_without_the_metric(client):
    _crown(client, _version(client, val_miou=50.0, val_tc=70.0))
    strict = RegistryConfig(min_improvement=1.0)
    assert not _beats_champion(client, NAME, {"val_miou": 50.5}, strict)
    assert _beats_champion(client, NAME, {"val_miou": 51.0}, strict)
    by_score = RegistryConfig(champion_metric="val_score", score_tc_weight=0.5)  # champion: 0.5*50 + 0.5*70 = 60
    assert score({"val_miou": 50.0, "val_tc": 70.0}, by_score) == 60.0
    assert _beats_champion(client, NAME, {"val_miou": 45.0, "val_tc": 76.0}, by_score)  # 60.5: TC buys it
    assert not _beats_champion(client, NAME, {"val_miou": 55.0, "val_tc": 64.0}, by_score)  # 59.5
    _crown(client, _version(client, val_miou=80.0))  # a champion registered without val_tc
    assert _beats_champion(client, NAME, {"val_miou": 1.0, "val_tc": 1.0}, RegistryConfig(champion_metric="val_tc"))
