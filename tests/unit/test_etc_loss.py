"""The combined ETC objective and its list of terms, through the forward training takes
(etc_core.train.loop.forward_pair, then EtcLoss), and what a newly registered term reaches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import Field, ValidationError

import etc_core.losses.distill as distill_module
import etc_core.losses.etc as etc_module
import etc_core.losses.temporal as temporal_module
from etc_core.config import StudentLossConfig, _default_space, load_config
from etc_core.losses import (EtcLoss, LossConfig, Outputs, Term, kd_pixel, kd_temporal, list_terms,
                             segmentation_loss, temporal_loss, term_names)
from etc_core.models import create_model, freeze
from etc_core.train.loop import (build_optimizer, epoch_terms, floats, forward_pair, stage_spec, step_metrics,
                                 train_step)

NUM_CLASSES = 4


def make_batch(seed=10, height=32, width=48):
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, NUM_CLASSES, (2, height, width), generator=gen)
    label[1, :4] = 255
    return dict(img_t=torch.randn(2, 3, height, width, generator=gen),
                img_next=torch.randn(2, 3, height, width, generator=gen),
                flow=torch.randn(2, 2, height, width, generator=gen) * 2, label=label)


def student_and_teacher():
    torch.manual_seed(0)
    return create_model("pspnet18_slim", NUM_CLASSES), freeze(create_model("mobilenetv2", NUM_CLASSES, width_mult=0.5))


def loss_of(loss_fn: EtcLoss, model, batch: dict, teacher=None, tc_scale: float = 1.0) -> dict:
    """The loss as train_step computes it: the one forward of the pair, then EtcLoss on its outputs."""
    return loss_fn(forward_pair(model, teacher, loss_fn, batch), batch, tc_scale)


STUDENT_CFG = LossConfig(ce_weight=1.0, tc_weight=0.3, kd_pixel_weight=0.7, kd_temporal_weight=2.0, kd_tau=2.0)


def test_loss_config_validation_and_roundtrip():
    assert LossConfig().model_dump() == dict(ce_weight=1.0, aux_weight=0.4, tc_weight=0.1, kd_pixel_weight=0.0,
                                             kd_temporal_weight=0.0, kd_tau=1.0, tc_on="logits",
                                             tc_mask_out_of_frame=True, tc_ramp=0.0, tc_flow="shards")
    assert LossConfig.model_validate(STUDENT_CFG.model_dump()) == STUDENT_CFG
    for bad in ({"tc_weigth": 0.1}, {"tc_weight": -1}, {"kd_tau": 0}, {"tc_on": "softmax"}, {"tc_ramp": 1.5},
                {"ce_weight": 0, "tc_weight": 0}):
        with pytest.raises(ValidationError):
            LossConfig(**bad)
    with pytest.raises(ValidationError, match="all loss weights are 0; nothing to train"):
        LossConfig(ce_weight=0, tc_weight=0)
    assert not LossConfig().needs_teacher and LossConfig().needs_next_frame and LossConfig().needs_flow
    assert not LossConfig(tc_weight=0).needs_next_frame and STUDENT_CFG.needs_teacher
    assert not LossConfig(tc_weight=0).needs_flow and not LossConfig(kd_pixel_weight=1.0, tc_weight=0).needs_flow


def test_the_registered_terms_are_todays_four():
    """Their names are metric names (train/loss_<name>) and their weights config keys: both are contracts."""
    assert term_names() == ("ce", "tc", "kd_pixel", "kd_temporal")
    assert [t.weight for t in list_terms()] == ["ce_weight", "tc_weight", "kd_pixel_weight", "kd_temporal_weight"]
    assert [t.name for t in list_terms() if t.etc] == ["tc", "kd_pixel", "kd_temporal"]
    assert [t.name for t in list_terms() if t.teacher] == ["kd_pixel", "kd_temporal"]


@pytest.mark.parametrize("term", list_terms(), ids=lambda t: t.name)
def test_every_registered_term_alone(term: Term):
    """Each term, the only one on: a config key of its own, computed through the training forward, reads frame
    t+k and the teacher only when it says so, and alone makes up the total."""
    names = [t.name for t in list_terms()]
    assert names.count(term.name) == 1 and term.name != "total"
    field = LossConfig.model_fields[term.weight]  # a LossConfig weight, >= 0
    assert field.annotation is float and any(getattr(m, "ge", None) == 0 for m in field.metadata)
    assert set(term.off) <= set(LossConfig.model_fields)
    cfg = LossConfig(**{t.weight: 0.0 for t in list_terms()} | {term.weight: 0.5})
    assert cfg.terms_on() == (term,) and cfg.needs_teacher == term.teacher
    assert cfg.needs_next_frame == term.next_frame and cfg.needs_flow == term.flow
    student, teacher = student_and_teacher()
    student = CountingModel(student.train())
    batch = make_batch()
    if not term.flow:
        del batch["flow"]  # train_step leaves it out: a term that does not say it reads the flow cannot
    parts = loss_of(EtcLoss(cfg), student, batch, teacher if term.teacher else None)
    assert student.batch_sizes == [4 if term.next_frame else 2]  # [t; t+k] in one forward, or t alone
    assert set(parts) == {*names, "total"} and parts[term.name].item() > 0
    assert all(parts[name].item() == 0 for name in names if name != term.name)
    torch.testing.assert_close(parts["total"], 0.5 * parts[term.name])


def test_terms_add_up_to_total_and_match_the_functions():
    student, teacher = student_and_teacher()
    batch = make_batch()
    student.train()
    out_t, out_next = student(batch["img_t"]), student(batch["img_next"])
    with torch.no_grad():
        teacher_t, teacher_next = teacher(batch["img_t"]), teacher(batch["img_next"])
    parts = EtcLoss(STUDENT_CFG)(Outputs(out_t, out_next, teacher_t, teacher_next), batch)
    assert set(parts) == {"ce", "tc", "kd_pixel", "kd_temporal", "total"}
    assert all(v.ndim == 0 and v.item() > 0 for v in parts.values())
    expected = {"ce": segmentation_loss(out_t.logits, batch["label"], out_t.aux, 0.4),
                "tc": temporal_loss(out_t.logits, out_next.logits, batch["flow"], batch["img_t"], batch["img_next"]),
                "kd_pixel": kd_pixel(out_t.features, teacher_t.features, 2.0)
                + kd_pixel(out_next.features, teacher_next.features, 2.0),
                "kd_temporal": kd_temporal(out_t.features, out_next.features, teacher_t.features,
                                           teacher_next.features)}
    for name, value in expected.items():
        torch.testing.assert_close(parts[name], value)
    total = parts["ce"] + 0.3 * parts["tc"] + 0.7 * parts["kd_pixel"] + 2.0 * parts["kd_temporal"]
    torch.testing.assert_close(parts["total"], total)


def test_the_training_forward_feeds_the_pair_in_one_batch():
    """forward_pair runs [t; t+k] through the model once (one dropout mask per pair) and the teacher likewise;
    the loss of those outputs is the one of the two halves."""
    student, teacher = student_and_teacher()
    batch = make_batch()
    student.eval()  # batch statistics aside, the one forward equals two
    out = forward_pair(student, teacher, EtcLoss(STUDENT_CFG), batch)
    with torch.no_grad():
        for got, image in ((out.out_t, batch["img_t"]), (out.out_next, batch["img_next"])):
            torch.testing.assert_close(got.logits, student(image).logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.teacher_next.features, teacher(batch["img_next"]).features, rtol=1e-4,
                                   atol=1e-4)
    assert all(x.dtype == torch.float32 for o in out for x in o if x is not None)


class CountingModel(torch.nn.Module):
    """Wraps a model and records the batch size of each forward call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.batch_sizes = model, []

    def forward(self, images):
        self.batch_sizes.append(len(images))
        return self.model(images)


def test_zero_weights_skip_computation(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a term with weight 0 was computed")

    monkeypatch.setattr(temporal_module, "temporal_loss", boom)
    for name in ("kd_pixel", "kd_temporal"):
        monkeypatch.setattr(distill_module, name, boom)
    student = CountingModel(create_model("pspnet18_slim", NUM_CLASSES))
    parts = loss_of(EtcLoss(LossConfig(tc_weight=0)), student, make_batch())  # plain CE baseline: no teacher
    assert student.batch_sizes == [2]  # one forward, of frame t alone: frame t+k is not even forwarded
    assert parts["tc"].item() == parts["kd_pixel"].item() == parts["kd_temporal"].item() == 0.0
    assert not parts["tc"].requires_grad
    torch.testing.assert_close(parts["total"], parts["ce"])
    parts["total"].backward()


def test_teacher_is_required_only_for_kd():
    student, _ = student_and_teacher()
    parts = loss_of(EtcLoss(LossConfig()), student, make_batch())  # teacher config: CE + TL, no teacher
    torch.testing.assert_close(parts["total"], parts["ce"] + 0.1 * parts["tc"])
    with pytest.raises(ValueError, match="kd_temporal_weight > 0 need a teacher"):
        loss_of(EtcLoss(LossConfig(kd_temporal_weight=1.0)), student, make_batch())
    with pytest.raises(ValueError, match="kd_pixel_weight > 0 need a teacher"):
        out = student(make_batch()["img_t"])
        EtcLoss(LossConfig(kd_pixel_weight=1.0))(Outputs(out, out), make_batch())
    with pytest.raises(ValueError, match="tc_weight > 0 need the output for frame t\\+k"):
        EtcLoss(LossConfig())(Outputs(out), make_batch())


@pytest.mark.parametrize("frozen", [True, False])
def test_gradients_reach_the_student_only(frozen):
    student, teacher = student_and_teacher()
    if not frozen:
        teacher.requires_grad_(True).train()  # even a careless caller's teacher gets no gradient
    student.train()
    parts = loss_of(EtcLoss(STUDENT_CFG), student, make_batch(), teacher)
    parts["total"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters()) > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training  # the teacher runs in eval mode (no dropout, running BN statistics)


def test_zero_inference_overhead():
    """After ETC training the student is the plain network: same class, parameters, buffers, hooks and outputs."""
    student, teacher = student_and_teacher()
    loss_fn = EtcLoss(STUDENT_CFG)
    assert sum(1 for _ in loss_fn.parameters()) == 0
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    student.train()
    for seed in range(2):
        optimizer.zero_grad()
        loss_of(loss_fn, student, make_batch(seed), teacher)["total"].backward()
        optimizer.step()
    plain = create_model("pspnet18_slim", NUM_CLASSES)
    assert type(student) is type(plain)
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in plain.parameters())
    assert student.state_dict().keys() == plain.state_dict().keys()
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in student.modules())
    # the same operations at inference: the traced graphs of the ETC-trained student and of an untrained plain
    # network have the same op kinds in the same order (a wrapper, an extra head or a flow branch would add some);
    # the weights differ (training changed them), so this is not a model compared with its own copy
    images = make_batch(seed=99)["img_t"]
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), plain.state_dict().values()))

    def ops(model) -> list[str]:
        model.requires_grad_(False)  # a traced lambda holds the weights as constants
        traced = torch.jit.trace(lambda x: model(x).logits, images, check_trace=False)
        return [node.kind() for node in traced.inlined_graph.nodes()]

    with torch.no_grad():
        assert ops(student.eval()) == ops(plain.eval())
        assert student(images).aux is None and plain(images).aux is None


# ---------- a new term: its file, its test, one line ----------

def _pair_l1(cfg, out: Outputs, batch, class_weight=None) -> torch.Tensor:
    """A toy ETC term: mean |softmax(z_t) - softmax(z_{t+k})| (no flow)."""
    return (out.out_t.logits.softmax(1) - out.out_next.logits.softmax(1)).abs().mean()


PAIR_L1 = Term("pair_l1", "pair_l1_weight", "pair L1", _pair_l1, next_frame=True, etc=True, sweep=(0.1, 1.0))


class PairL1Loss(StudentLossConfig):
    pair_l1_weight: float = Field(0.5, ge=0)  # the term's weight: a LossConfig field (docs/architecture.md)


def test_a_registered_term_reaches_the_total_the_logs_the_baseline_and_the_sweep(monkeypatch):
    """Registering a term (one entry in etc_core.losses.etc.TERMS) is all it takes for training to compute, sum
    and log it, for the per-frame baseline to switch it off and for the default sweep to vary its weight."""
    base = load_config(None, ["student.arch=pspnet18_slim"])
    only_ce_and_new = PairL1Loss(tc_weight=0, kd_pixel_weight=0, kd_temporal_weight=0)
    cfg = base.model_copy(update={"student": base.student.model_copy(update={"loss": only_ce_and_new})})
    monkeypatch.setattr(etc_module, "TERMS", etc_module.TERMS + (PAIR_L1,))

    loss_fn = EtcLoss(stage_spec(cfg, "student").loss)
    assert term_names()[-1] == "pair_l1" and loss_fn.cfg.needs_next_frame and not loss_fn.cfg.needs_teacher
    torch.manual_seed(0)
    model = create_model("pspnet18_slim", num_classes=NUM_CLASSES).train()
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    rng = np.random.default_rng(0)
    batch = {"img0": torch.from_numpy(rng.integers(0, 255, (2, 3, 32, 48), dtype=np.uint8)),
             "img1": torch.from_numpy(rng.integers(0, 255, (2, 3, 32, 48), dtype=np.uint8)),
             "flow": torch.zeros(2, 2, 32, 48), "label": torch.from_numpy(rng.integers(0, NUM_CLASSES, (2, 32, 48)))}
    values = floats(train_step(model, None, loss_fn, opt, sched, torch.amp.GradScaler("cuda", enabled=False), batch,
                               torch.device("cpu"), use_amp=False, grad_clip=None))
    assert values["pair_l1"] > 0 and values["total"] == pytest.approx(values["ce"] + 0.5 * values["pair_l1"])
    assert "train/loss_pair_l1" in step_metrics(values, 0.01)
    assert epoch_terms({f"train_{k}": v for k, v in values.items()}).split()[-4:-2] == ["pair_l1",
                                                                                       f"{values['pair_l1']:.4f}"]
    baseline = stage_spec(cfg, "baseline").loss
    assert baseline.pair_l1_weight == 0 and baseline.ce_weight == 1 and cfg.student.loss.pair_l1_weight == 0.5
    assert list(_default_space())[-2:] == ["student.loss.pair_l1_weight", "train.lr"]
