"""The statistics and controls of the reproduction benchmark (benchmarks/reproduce.py), on hand-made numbers."""
import pytest
import torch

from benchmarks import reproduce


def test_ci95_uses_students_t():
    r = reproduce.ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert r["mean"] == 3.0 and r["n"] == 5
    assert r["ci95"] == pytest.approx(2.776 * (2.5 ** 0.5) / 5 ** 0.5, rel=1e-3)  # t(0.975, 4 df) * s / sqrt(n)


def test_above_curve_interpolates_at_equal_miou():
    curve = [{"miou": 60.0, "tc_noc": 80.0}, {"miou": 50.0, "tc_noc": 90.0}]  # blur: less mIoU, more TC
    assert reproduce.above_curve({"miou": 55.0, "tc_noc": 86.0}, curve) == pytest.approx(1.0)
    assert reproduce.above_curve({"miou": 55.0, "tc_noc": 84.0}, curve) == pytest.approx(-1.0)
    assert reproduce.above_curve({"miou": 45.0, "tc_noc": 95.0}, curve) is None  # below the curve's mIoU
    assert reproduce.above_curve({"miou": 65.0, "tc_noc": 84.0}, curve) == pytest.approx(4.0)  # beats its top
    assert reproduce.above_curve({"miou": 65.0, "tc_noc": 79.0}, curve) is None  # more accurate, less consistent


def test_smoothed_blurs_logits_and_keeps_constant_maps():
    from etc_core.models import SegOutput

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return SegOutput(self.logits, self.logits)

    flat = torch.ones(1, 3, 16, 16)
    assert torch.allclose(reproduce.Smoothed(Fixed(flat), 2.0)(None).logits, flat, atol=1e-6)
    spike = torch.zeros(1, 1, 16, 16)
    spike[0, 0, 8, 8] = 1.0
    out = reproduce.Smoothed(Fixed(spike), 1.0)(None).logits
    assert out.sum() == pytest.approx(1.0, rel=1e-5) and out.max() < 0.2 and out[0, 0, 8, 8] == out.max()


def _bench(tmp_path, *overrides):
    from benchmarks import common
    from etc_core.config import load_config

    return load_config(common.CONFIG, [f"data.root={tmp_path}/data", f"shards.uri={tmp_path}/shards",
                                       f"train.storage_path={tmp_path}/ray", *overrides])


def test_bench_key_ignores_places_and_store_uris_and_follows_what_trains(tmp_path):
    from benchmarks.common import bench_key

    a, b = _bench(tmp_path / "a"), _bench(tmp_path / "b")  # another checkout or bench root: the same training
    assert bench_key(a, "baseline") == bench_key(b, "baseline")
    assert bench_key(_bench(tmp_path, "student.init_from=models:/x/1", "student.teacher_uri=models:/t/2"),
                     "student") == bench_key(_bench(tmp_path, "student.init_from=models:/y/9"), "student")
    seeded = _bench(tmp_path, "train.seed=1")
    assert bench_key(seeded, "baseline") != bench_key(a, "baseline")
    assert bench_key(a, "student", {"init_from": "k1"}) != bench_key(a, "student", {"init_from": "k2"})
    assert bench_key(a, "student") != bench_key(a, "baseline") != bench_key(a, "teacher")
    assert bench_key(_bench(tmp_path, "student.loss.tc_weight=1.0"), "student") != bench_key(a, "student")


def test_ledger_keeps_rows_across_instances_and_notes_a_remeasured_difference(tmp_path, monkeypatch, capsys):
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    ledger = common.Ledger("ledger")
    ledger.put("k", {"miou": 50.0, "tc": 70.0}, compare=("miou", "tc"))
    again = common.Ledger("ledger")  # a later run (or session) reads what the first wrote
    assert again.get("k")["miou"] == 50.0 and again.get("k")["commit"] and again.get("missing") is None
    again.put("k", {"miou": 50.0, "tc": 70.0}, compare=("miou", "tc"))
    assert "different" not in capsys.readouterr().out
    again.put("k", {"miou": 51.0, "tc": 70.0}, compare=("miou", "tc"))
    assert "measured again with different results" in capsys.readouterr().out
    kept = common.Ledger("ledger").get("k")
    assert kept["miou"] == 50.0 and [r["diff"]["miou"] for r in kept["remeasured"]] == [0.0, 1.0]
    assert not list(tmp_path.glob("*.tmp"))


def test_ledger_sets_superseded_rows_aside_with_their_reason_and_keeps_them(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    ledger = common.Ledger("ledger")
    ledger.put("a", {"miou": 50.0})
    ledger.put("b", {"miou": 60.0})
    assert ledger.get("a")["cpu"] == common.machine()["cpu"]  # determinism holds per CPU model: each row says which
    ledger.supersede(["a", "not there"], "trained on another CPU model")
    again = common.Ledger("ledger")
    assert again.get("a") is None and again.get("b")["miou"] == 60.0
    assert [(s["key"], s["reason"], s["row"]["miou"]) for s in again.superseded] == [
        ("a", "trained on another CPU model", 50.0)]
    again.put("a", {"miou": 51.0})  # trained again: the new row takes the key, the old one stays aside
    last = common.Ledger("ledger")
    assert last.get("a")["miou"] == 51.0 and last.superseded[0]["row"]["miou"] == 50.0


def test_plan_result_counts_only_seeds_with_both_rows_and_lists_what_is_missing(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    plan = reproduce.Plan(_bench(tmp_path), [0, 1, 2], {"train.max_steps": 600})
    ledger = common.Ledger("ledger")
    row = {"train_s": 1.0, "miou": 60.0, "tc": 70.0, "tc_noc": 75.0, "flicker_interior": 2.0,
           "flicker_boundary": 15.0}
    curve = [{"sigma": 1.0, **row, "miou": 61.0, "tc_noc": 74.0}, {"sigma": 3.0, **row, "miou": 55.0, "tc_noc": 80.0}]
    for seed, tc_noc in ((0, 1.0), (1, 3.0)):  # two seeds: baseline and +TL, no KD, no teacher yet
        ledger.put(plan.baseline[seed], {**row, "references": [{"variant": "ground truth", **row}],
                                         "smoothing": curve})
        ledger.put(plan.students[seed]["+TL"][1], {**row, "tc_noc": 75.0 + tc_noc, "baseline": row})
    ledger.put(plan.baseline[2], {**row, "seed": 2, "variant": "baseline", "references": [], "smoothing": curve})
    ledger.put(plan.students[2]["+TL"][1], {**row, "seed": 2, "variant": "+TL",
                                            "baseline": {**row, "miou": 59.0}})  # another baseline's student
    r = plan.result(ledger)
    assert not r["complete"]
    assert {"seed": 2, "variant": "+TL", "reason": "trained from another baseline"} in r["missing"]
    assert {"seed": 0, "variant": "teacher"} in r["missing"]
    d = r["paired"]["+TL - baseline"]["tc_noc"]
    assert d["n"] == 2 and d["mean"] == pytest.approx(2.0)
    assert set(r["paired"]) == {"+TL - baseline"} and r["kd_gap_closure"] == {}
    assert r["tc_noc_above_smoothing_curve"]["+TL"]["0"] == pytest.approx(1.0)  # curve: 75 at mIoU 60
    assert [x["variant"] for x in r["runs"] if x["seed"] is None] == ["ground truth"]
    assert r["cpus"] == {common.machine()["cpu"]: 6} and r["superseded"] == []
    ledger.supersede([plan.baseline[2], plan.students[2]["+TL"][1]], "trained on another CPU model")
    r = plan.result(ledger)  # seed 2 is to be trained again: missing, its old rows listed with the reason
    assert {"seed": 2, "variant": "baseline"} in r["missing"] and {"seed": 2, "variant": "+TL"} in r["missing"]
    assert [(g["reason"], [(x["seed"], x["variant"], x["miou"]) for x in g["rows"]]) for g in r["superseded"]] == [
        ("trained on another CPU model", [(2, "baseline", 60.0), (2, "+TL", 60.0)])]


def test_plan_result_lists_the_one_teacher_once_and_measures_every_seeds_gap_against_it(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    plan = reproduce.Plan(_bench(tmp_path), [0, 1], {"train.max_steps": 600})
    ledger = common.Ledger("ledger")
    row = {"train_s": 1.0, "miou": 60.0, "tc": 70.0, "tc_noc": 75.0, "flicker_interior": 2.0,
           "flicker_boundary": 15.0}
    teacher = {**row, "miou": 62.0}
    ledger.put(plan.teacher, teacher)
    for seed, kd in ((0, 61.0), (1, 60.5)):
        ledger.put(plan.baseline[seed], {**row, "references": [], "smoothing": [{"sigma": 0.0, **row}]})
        ledger.put(plan.students[seed]["+TL"][1], {**row, "baseline": row})
        ledger.put(plan.students[seed]["+TL+KD"][1], {**row, "miou": kd, "baseline": row, "teacher": teacher})
        ledger.put(plan.students[seed]["control: lambda=0"][1], {**row, "miou": 61.0, "baseline": row})
    r = plan.result(ledger)
    assert r["paired"]["+TL+KD - control: lambda=0"]["miou"]["mean"] == pytest.approx(-0.25)  # at equal steps
    assert [(x["seed"], x["miou"]) for x in r["runs"] if x["variant"] == "teacher"] == [(0, 62.0)]
    assert r["kd_gap_closure"] == {"0": pytest.approx(0.5), "1": pytest.approx(0.25)}
    assert {"seed": 0, "variant": "teacher"} not in r["missing"]
    other = reproduce.Plan(_bench(tmp_path), [1], {"train.max_steps": 600}).result(ledger)  # seed 0 not among them
    assert [x["seed"] for x in other["runs"] if x["variant"] == "teacher"] == [0] and other["kd_gap_closure"] == {
        "1": pytest.approx(0.25)}


def test_the_studies_plan_their_own_models(tmp_path, monkeypatch):
    """The motion study has no teacher and trains its estimated-flow arm on shards of its own; the distillation
    study's teacher trains on every frame labelled, its KD arms take the swept weights, and its result measures
    how much of the teacher's lead over lambda=0 each arm takes, per seed and with a CI."""
    from benchmarks import common
    from benchmarks.repro_plan import STUDIES

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    base = _bench(tmp_path)
    motion = reproduce.Plan(base, [0], {"train.max_steps": 600}, STUDIES["motion"])
    dis, _ = motion.students[0]["+TL dis flow"]
    assert dis.flow.source == "dis" and dis.shards.uri == f"{base.shards.uri}_dis"
    assert motion.students[0]["+TL"][0].shards.uri == base.shards.uri
    assert "teacher" not in [m["variant"] for m in motion.result(common.Ledger("m"))["missing"]]
    kd = reproduce.Plan(base, [0, 1], {"train.max_steps": 2000}, STUDIES["kd"],
                        {"student.loss.kd_pixel_weight": 3.0})
    assert kd.teacher_cfg.data.label_every == 1 and kd.teacher_cfg.data.root == f"{base.data.root}_every_frame"
    assert kd.students[0]["KD only"][0].student.loss.kd_pixel_weight == 3.0
    assert kd.students[0]["KD only"][0].student.loss.tc_weight == 0.0
    assert kd.students[0]["+TL"][0].student.loss.kd_pixel_weight == 0.0  # its own overrides win
    ledger = common.Ledger("kd")
    row = {"train_s": 1.0, "miou": 60.0, "tc": 70.0, "tc_noc": 75.0, "flicker_interior": 2.0,
           "flicker_boundary": 15.0}
    ledger.put(kd.teacher, {**row, "miou": 70.0})
    for seed, (s_kd, s_both) in enumerate(((65.0, 62.0), (62.0, 61.0))):
        ledger.put(kd.baseline[seed], {**row, "references": [], "smoothing": [{"sigma": 0.0, **row}]})
        ledger.put(kd.students[seed]["control: lambda=0"][1], {**row, "baseline": row})
        ledger.put(kd.students[seed]["KD only"][1], {**row, "miou": s_kd, "baseline": row, "teacher": {
            **row, "miou": 70.0}})
        ledger.put(kd.students[seed]["+TL+KD"][1], {**row, "miou": s_both, "baseline": row, "teacher": {
            **row, "miou": 70.0}})
    closure = kd.result(ledger)["gap_closure_vs_lambda0"]
    assert closure["KD only"]["per_seed"] == {"0": pytest.approx(0.5), "1": pytest.approx(0.2)}
    assert closure["KD only"]["ci"]["mean"] == pytest.approx(0.35) and closure["+TL+KD"]["ci"]["n"] == 2
