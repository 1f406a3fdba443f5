"""The ETC terms trained as defined: one dropout mask per pair, a warm start, the tc ramp, head LR only above a
pretrained backbone, the logit norm logged. Every check goes through the functions training calls."""
import numpy as np
import pytest
import torch

from etc_core.config import load_config
from etc_core.losses import EtcLoss, Outputs
from etc_core.losses.etc import LossConfig
from etc_core.models import create_model, paired_dropout
from etc_core.train.loop import (_check_finite, build_optimizer, build_training, epoch_terms, floats, stage_spec,
                                 step_metrics, train_step)

K = 5


def _identical_pair_batch(h: int = 48, w: int = 64) -> dict:
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 255, (2, 3, h, w), dtype=np.uint8))
    return {"img0": frames, "img1": frames.clone(), "flow": torch.zeros(2, 2, h, w),
            "label": torch.from_numpy(rng.integers(0, K, (2, h, w)))}


def test_temporal_loss_is_zero_on_an_identical_pair_with_zero_flow_in_train_mode():
    """The zero-loss control: with one dropout mask per pair the tc term vanishes; with independent masks not."""
    torch.manual_seed(0)
    model = create_model("pspnet18_slim", num_classes=K).train()
    cfg = load_config(None, ["train.lr=1e-12"])
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss_fn = EtcLoss(LossConfig(tc_weight=1.0))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    values = floats(train_step(model, None, loss_fn, opt, sched, scaler, _identical_pair_batch(),
                               torch.device("cpu"), use_amp=False, grad_clip=None))
    assert values["tc"] < 1e-6 and values["ce"] > 0.1
    assert values["logit_norm"] > 0
    # the names training logs (MLflow metrics and the epoch line), read from the loss's list of terms
    assert set(step_metrics(values, 0.1)) == {"train/loss_ce", "train/loss_tc", "train/loss_kd_pixel",
                                              "train/loss_kd_temporal", "train/loss_total", "train/lr",
                                              "train/logit_norm"}
    assert epoch_terms({f"train_{k}": v for k, v in values.items()}).split()[::2] == [
        "ce", "tc", "kd_pixel", "kd_temporal", "logit_norm"]
    # the control can fail: the same forward without a shared mask gives a clearly non-zero loss
    from etc_core.models import normalize

    x = normalize(_identical_pair_batch()["img0"])
    out = model(torch.cat([x, x]))
    assert ((out.logits[:2] - out.logits[2:]) ** 2).mean() > 1e-4
    with paired_dropout(model):
        out = model(torch.cat([x, x]))
    assert torch.equal(out.logits[:2], out.logits[2:])


def test_tc_ramp_scales_the_weight_linearly_then_holds():
    loss = EtcLoss(LossConfig(tc_weight=0.5, tc_ramp=0.25))
    assert [loss.tc_scale(s, 100) for s in (0, 11, 24, 25, 99)] == pytest.approx([0.04, 0.48, 1.0, 1.0, 1.0])
    assert EtcLoss(LossConfig(tc_weight=0.5)).tc_scale(0, 100) == 1.0
    logits = torch.randn(1, K, 8, 8)
    from etc_core.models import SegOutput

    out_t, out_next = SegOutput(logits, logits[..., ::8, ::8]), SegOutput(logits + 1, logits[..., ::8, ::8])
    batch = {"img_t": torch.zeros(1, 3, 8, 8), "img_next": torch.zeros(1, 3, 8, 8), "flow": torch.zeros(1, 2, 8, 8),
             "label": torch.zeros(1, 8, 8, dtype=torch.long)}
    full = loss(Outputs(out_t, out_next), batch)
    half = loss(Outputs(out_t, out_next), batch, tc_scale=0.5)
    assert float(full["total"] - half["total"]) == pytest.approx(0.25 * float(full["tc"]), rel=1e-5)


def test_head_lr_multiplier_only_above_a_pretrained_backbone():
    cfg = load_config(None, ["train.lr=0.01", "train.head_lr_mult=10"])
    model = create_model("pspnet18_slim", num_classes=K)
    assert [g["lr"] for g in build_optimizer(model, cfg).param_groups] == [0.01, 0.01]
    assert [g["lr"] for g in build_optimizer(model, cfg, pretrained=True).param_groups] == [0.01, 0.1]


def test_warm_start_weights_are_the_ones_training_starts_from():
    cfg = load_config(None, ["student.arch=pspnet18_slim"])
    source = create_model("pspnet18_slim", num_classes=K)
    model, *_ = build_training(cfg, "pspnet18_slim", K, use_amp=False, init_state=source.state_dict())
    for a, b in zip(model.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)
    assert model.training
    # the backbone weights a warm start would overwrite are not read (this file does not exist)
    warm, *_ = build_training(cfg, "pspnet18_slim", K, use_amp=False, pretrained="/nonexistent/backbone.pt",
                              init_state=source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(warm.state_dict().values(), source.state_dict().values()))


def test_the_baseline_never_inherits_the_students_warm_start_or_ramp():
    cfg = load_config(None, ["student.init_from=models:/etc-baseline-pspnet18/1", "student.loss.tc_ramp=0.3"])
    base = stage_spec(cfg, "baseline")
    assert base.init_from is None and base.loss.tc_ramp == 0 and base.loss.tc_weight == 0
    # every ETC term off, read from the list of terms: the same config (so the same cache key) as written out
    assert base.loss == cfg.student.loss.model_copy(update={"tc_weight": 0.0, "kd_pixel_weight": 0.0,
                                                            "kd_temporal_weight": 0.0, "tc_ramp": 0.0})
    assert base.loss.kd_pixel_weight == base.loss.kd_temporal_weight == 0 and base.loss.ce_weight == 1
    assert stage_spec(cfg, "student").init_from == "models:/etc-baseline-pspnet18/1"


def test_the_baselines_cache_key_ignores_what_it_does_not_read():
    """The per-frame baseline reads no teacher and no ETC weight: changing them must not retrain it (the
    reproduction reuses the baselines of the data acceptance), while the student's own key does change."""
    from etc_core.train.run import stage_hash

    cfg = load_config(None)
    changed = load_config(None, ["student.teacher_uri=models:/etc-teacher/7", "student.loss.tc_weight=0.5",
                                 "student.init_from=models:/etc-baseline/1"])
    assert stage_hash(changed, "baseline") == stage_hash(cfg, "baseline")
    assert stage_hash(changed, "student") != stage_hash(cfg, "student")
    assert stage_hash(load_config(None, ["student.arch=mobilenetv2"]), "baseline") != stage_hash(cfg, "baseline")


def test_zero_flow_control_compares_frames_without_motion():
    """tc_flow=zero (a control of the reproduction) ignores the shards' flow; the default uses it."""
    from etc_core.models import SegOutput

    torch.manual_seed(1)
    logits = torch.randn(1, K, 16, 16)
    shifted = torch.roll(logits, 2, dims=-1)  # frame t+1 = frame t moved 2 px right
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = 2.0
    batch = {"img_t": torch.zeros(1, 3, 16, 16), "img_next": torch.zeros(1, 3, 16, 16), "flow": flow,
             "label": torch.zeros(1, 16, 16, dtype=torch.long)}
    args = (Outputs(SegOutput(logits, logits), SegOutput(shifted, shifted)), batch)
    true_flow = EtcLoss(LossConfig(tc_weight=1.0))(*args)["tc"]
    zero_flow = EtcLoss(LossConfig(tc_weight=1.0, tc_flow="zero"))(*args)["tc"]
    assert float(true_flow) < 0.1 * float(zero_flow)


def test_step_values_stay_on_the_device_until_a_log_point_reads_them():
    """train_step hands back detached 0-d tensors (reading one waits for the device); the loop adds them up on the
    device and checks the sum at its log points, naming the steps a non-finite loss fell in."""
    torch.manual_seed(0)
    model = create_model("pspnet18_slim", num_classes=K).train()
    cfg = load_config(None, [])
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    values = train_step(model, None, EtcLoss(LossConfig(tc_weight=1.0)), opt, sched,
                        torch.amp.GradScaler("cuda", enabled=False), _identical_pair_batch(), torch.device("cpu"),
                        use_amp=False, grad_clip=None)
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in values.values())
    assert floats(values) == {k: float(v) for k, v in values.items()}
    sums = {"total": torch.tensor(3.0), "ce": torch.tensor(2.0)}
    _check_finite(sums, 50, 100)  # finite: nothing raised
    sums["total"] = sums["total"] + torch.tensor(float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan in steps 51-100"):
        _check_finite(sums, 50, 100)


def test_the_train_worker_times_its_model_without_moving_it_or_leaving_train_mode():
    from etc_core.train.card import measure_fps

    model = create_model("lraspp_mobilenetv3", 3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fps = measure_fps(model, (32, 48), torch.device("cpu"))
    assert fps > 0 and model.training and next(model.parameters()).device.type == "cpu"
    # timing runs in eval mode under inference_mode: the batch-norm statistics it trains with are untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
