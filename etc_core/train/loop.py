"""The one training loop, for the teacher and the students alike (run by every Ray Train worker).

Teacher: CE (+ the temporal loss) on labelled pairs. Student: the same loop with the ETC terms switched on by
their weights and a frozen teacher passed in. Nothing here knows which stage it is beyond `cfg_dict["stage"]`.
"""
from __future__ import annotations

import logging
import math
import random
import tempfile
import time

import numpy as np
import ray.train
import torch
from ray.train import Checkpoint
from ray.train.torch import get_device, prepare_model

from etc_core.config import EtcConfig
from etc_core.data import shards
from etc_core.losses import EtcLoss, Outputs, term_names
from etc_core.metrics import METRICS, val_score
from etc_core.models import SegOutput, create_model, freeze, from_weights, normalize, paired_dropout
from etc_core.tracking.mlflow import RunLogger
from etc_core.train.augment import PairAugment
from etc_core.train.card import measure_fps
from etc_core.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from etc_core.train.config import STAGES, stage_config, stage_spec  # noqa: F401 (re-exported)
from etc_core.train.evaluate import evaluate

log = logging.getLogger(__name__)

HEAD_PREFIXES = ("ppm.", "head.", "aux_head.", "classifier.", "decoder.")


def param_groups(model: torch.nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
    """Backbone at lr, heads (PPM, classifier, aux) at lr * head_lr_mult (docs/method.md)."""
    head, backbone = [], []
    for name, p in model.named_parameters():
        (head if name.startswith(HEAD_PREFIXES) else backbone).append(p)
    return [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]


def build_optimizer(model: torch.nn.Module, cfg: EtcConfig, pretrained: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW; the heads get train.head_lr_mult x the LR only above a pretrained backbone (ImageNet or a
    weights file: a rule for fine-tuning a trained trunk under fresh heads; from random init every layer starts
    equal)."""
    t = cfg.train
    groups = param_groups(model, t.lr, t.head_lr_mult if pretrained else 1.0)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)


def split_output(out: SegOutput, n: int) -> tuple[SegOutput, SegOutput]:
    """Split a forward over cat([frames_t, frames_next]) back into the two frames' outputs."""
    first = SegOutput(*[None if x is None else x[:n] for x in out])
    second = SegOutput(*[None if x is None else x[n:] for x in out])
    return first, second


def _fp32(out: SegOutput | None) -> SegOutput | None:
    return None if out is None else SegOutput(*[None if x is None else x.float() for x in out])


def build_training(cfg: EtcConfig, arch: str, num_classes: int, use_amp: bool, pretrained="none",
                   init_state: dict | None = None):
    """(model, optimizer, poly LR scheduler, grad scaler) for one stage, on the CPU, before any resume.

    pretrained: the backbone's weights (a BackboneState the driver read, or none, imagenet, or a path / s3:// URI
    read here at cfg.s3); init_state: a whole model's weights to fine-tune from (student.init_from)."""
    t = cfg.train
    if init_state is not None:  # the whole network from those weights (a backbone's would be overwritten: not read)
        model = from_weights(arch, num_classes, init_state).train()
    else:
        model = create_model(arch, num_classes=num_classes, pretrained=pretrained, s3=cfg.s3.access)
    opt = build_optimizer(model, cfg, pretrained=pretrained not in (None, False, "none"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / t.max_steps) ** t.poly_power)
    return model, opt, sched, torch.amp.GradScaler("cuda", enabled=use_amp)


def forward_pair(model, teacher, loss_fn: EtcLoss, data: dict, use_amp: bool = False) -> Outputs:
    """The one forward of training: the model on frames t and t+k in one batch under one dropout mask per pair
    (frame t alone when no term reads t+k), the frozen teacher on both frames in eval mode without gradient
    (when a term reads it), under fp16 autocast when use_amp; the outputs in fp32, as the loss takes them.

    data: img_t, img_next [B,3,H,W] normalised (the batch EtcLoss reads)
    """
    cfg = loss_fn.cfg
    cfg.check_teacher(teacher is not None)
    img_t, img_next = data["img_t"], data["img_next"]
    n = len(img_t)
    with torch.autocast(img_t.device.type, dtype=torch.float16, enabled=use_amp):
        both = cfg.needs_next_frame
        with paired_dropout(model):  # one dropout mask per pair: the two frames see the same network
            out = model(torch.cat([img_t, img_next]) if both else img_t)
        out_t, out_next = split_output(out, n) if both else (out, None)
        t_out = (None, None)
        if cfg.needs_teacher:
            teacher.eval()
            with torch.no_grad():
                t_out = split_output(teacher(torch.cat([img_t, img_next])), n)
    return Outputs(_fp32(out_t), _fp32(out_next), _fp32(t_out[0]), _fp32(t_out[1]))


def train_step(model, teacher, loss_fn: EtcLoss, opt, sched, scaler, batch: dict, device: torch.device,
               use_amp: bool, grad_clip: float | None, tc_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One optimizer step on a loader batch (uint8 frames, flow, label); returns the loss terms and `logit_norm`,
    the mean L2 norm of frame t's per-pixel logit vector (a shrinking norm is how a logit-form temporal loss can be
    lowered without changing any prediction, docs/method.md), as detached 0-d tensors on the device: reading them
    (`floats`) waits for the device, so the loop reads them only when it logs (docs/benchmarks.md, "Train-step
    overhead")."""
    data = {"img_t": normalize(batch["img0"].to(device)), "img_next": normalize(batch["img1"].to(device)),
            "label": batch["label"].to(device)}
    if loss_fn.cfg.needs_flow:
        data["flow"] = batch["flow"].to(device).float()
    out = forward_pair(model, teacher, loss_fn, data, use_amp)
    parts = loss_fn(out, data, tc_scale)  # fp32
    opt.zero_grad(set_to_none=True)
    scaler.scale(parts["total"]).backward()
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    sched.step()
    values = {k: v.detach() for k, v in parts.items()}
    # the same value as .norm(dim=1).mean(), which is 3-5x slower on CPU (a strided reduction over the class axis):
    # 23 ms of a 900 ms student step in benchmarks/train_overhead.py's profile
    values["logit_norm"] = out.out_t.logits.detach().float().square().sum(1).sqrt().mean()
    return values


def floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """train_step's values as Python floats: one transfer from the device, not one per value."""
    names = list(values)
    return dict(zip(names, torch.stack([values[k].float() for k in names]).tolist()))


def step_metrics(values: dict[str, float], lr: float) -> dict[str, float]:
    """A step's MLflow metrics: train/loss_<name> for every loss term and the total, train/lr, train/logit_norm."""
    return ({f"train/loss_{k}": values[k] for k in (*term_names(), "total")} |
            {"train/lr": lr, "train/logit_norm": values["logit_norm"]})


def epoch_terms(metrics: dict[str, float]) -> str:
    """The epoch log's means, `ce 0.4100 tc 0.0200 ... logit_norm 1.2345`, of every loss term and the logit norm."""
    return " ".join(f"{k} {metrics[f'train_{k}']:.4f}" for k in (*term_names(), "logit_norm")
                    if f"train_{k}" in metrics)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: config = {"cfg": EtcConfig dump, "stage", "num_classes", "run_id", "teacher", "init",
    "score_tc_weight"}."""
    cfg = EtcConfig.model_validate(config["cfg"])
    stage, num_classes = config["stage"], config["num_classes"]
    spec, t = stage_spec(cfg, stage), cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(t.seed + rank)
    device = get_device()
    use_amp = t.amp and device.type == "cuda"

    init = config.get("init")  # (meta, state) of student.init_from, put in the object store by the driver
    init_state = (ray.get(init) if isinstance(init, ray.ObjectRef) else init)[1] if init is not None else None
    backbone = config.get("backbone")  # the backbone's weights, read once by the driver (train/run.py)
    if isinstance(backbone, ray.ObjectRef):
        backbone = ray.get(backbone)
    if backbone is None and init_state is None and spec.pretrained != "none":
        raise RuntimeError(f"{stage}.pretrained={spec.pretrained}: the driver passes the backbone's weights to the "
                           "workers (make_trainer's backbone); a worker never reads them itself")
    model, opt, sched, scaler = build_training(cfg, spec.arch, num_classes, use_amp, backbone or "none", init_state)
    raw = model
    step = 0
    if (ckpt := ray.train.get_checkpoint()) is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(d)
        raw.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = state["step"]
        set_rng_state(state["rng"])
        if rank == 0:
            log.info("%s: resumed from checkpoint at step %d", stage, step)
    model = prepare_model(model)  # to the device; DDP when world > 1
    for group in opt.state.values():  # optimizer state to the device after a resume
        for k, v in group.items():
            if torch.is_tensor(v):
                group[k] = v.to(device)

    teacher = frozen_teacher(config.get("teacher"), device) if spec.loss.needs_teacher else None
    spec.loss.check_teacher(teacher is not None)  # before the first step
    loss_fn = EtcLoss(spec.loss).to(device)
    logger = RunLogger(cfg.mlflow.tracking_uri, config["run_id"], cfg.s3.access) if rank == 0 and config.get("run_id") else None
    augment = PairAugment(crop=t.crop, scale=t.scale, flip=t.flip) if t.crop else None

    monitor = logger.system_metrics() if logger else None  # system/*: the machine that trains, not the driver's
    fps = None  # the model card's speed: rank 0 times its model once, on the device it trains on (a GPU node's)
    try:
        while True:
            epoch = step // t.steps_per_epoch
            steps = min(t.steps_per_epoch - step % t.steps_per_epoch, t.max_steps - step)
            train_metrics = train_epoch(model, teacher, loss_fn, opt, sched, scaler, cfg, epoch, step, steps,
                                         rank, world, augment, device, use_amp, logger) if steps > 0 else {}
            step += max(steps, 0)
            metrics = {"step": step, "epoch": epoch, **train_metrics}
            val = {f"val_{k}": float("nan") for k in METRICS} | {"val_pairs": 0.0}
            picture = None
            if rank == 0:
                val_loader = shards.make_loader(cfg.shards.uri, "val", t.val_batch_size, shuffle=False,
                                                s3=cfg.s3.access)
                # the bare module: a DDP forward broadcasts buffers, a collective the other ranks never join
                val, picture = evaluate(raw, val_loader, num_classes, device, pictures=t.pictures)
                if fps is None and config.get("size"):
                    fps = measure_fps(raw, tuple(config["size"]), device)
                    if logger:
                        logger.metrics({"fps": fps}, step=step)
                if fps is not None:
                    metrics["fps"] = fps
                log.info("%s epoch %d step %d/%d: val mIoU %.2f TC %.2f TC-noc %.2f flicker %.2f%% (%d pairs)", stage,
                         epoch, step, t.max_steps, val["val_miou"], val["val_tc"], val["val_tc_noc"],
                         val["val_flicker_interior"], val["val_pairs"])
                if logger:
                    logger.metrics({f"val/{k[4:]}": v for k, v in val.items() if math.isfinite(v)}, step=step)
                    if picture is not None:
                        logger.image(picture, "val/pictures", step=step)
            metrics.update(val)
            if config.get("score_tc_weight") is not None:  # a sweep trial: its objective, in every report
                metrics["val_score"] = val_score(val["val_miou"], val["val_tc"], config["score_tc_weight"])
            with tempfile.TemporaryDirectory() as d:
                checkpoint = None
                if rank == 0 and steps > 0:
                    save_checkpoint(d, model=raw.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                    scaler=scaler.state_dict(), step=step, rng=rng_state(), arch=spec.arch,
                                    num_classes=num_classes)
                    checkpoint = Checkpoint.from_directory(d)
                ray.train.report(metrics, checkpoint=checkpoint)  # every rank, same number of times
            if step >= t.max_steps:
                break
    finally:
        if monitor is not None:
            monitor.finish()


def frozen_teacher(teacher_ref, device: torch.device) -> torch.nn.Module | None:
    """The teacher network from its (meta, state dict) (or an ObjectRef of it), frozen, on `device`; None for None."""
    if teacher_ref is None:
        return None
    meta, state = ray.get(teacher_ref) if isinstance(teacher_ref, ray.ObjectRef) else teacher_ref
    return freeze(from_weights(meta["arch"], meta["num_classes"], state)).to(device)


def train_epoch(model, teacher, loss_fn, opt, sched, scaler, cfg: EtcConfig, epoch: int, step0: int, steps: int,
                 rank: int, world: int, augment, device, use_amp: bool, logger) -> dict[str, float]:
    """`steps` optimizer steps over this rank's stream of training pairs; returns the epoch's mean loss terms."""
    t = cfg.train
    loader = shards.make_loader(cfg.shards.uri, "train", t.batch_size, rank=rank, world_size=world,
                                num_workers=t.loader_workers, shuffle=True, seed=t.seed + 7919 * epoch,
                                transform=augment, steps_per_epoch=steps, s3=cfg.s3.access)
    model.train()
    sums: dict[str, torch.Tensor] = {}  # on the device: added up without waiting for it
    samples, start, data_s = 0, time.perf_counter(), 0.0
    step, checked = step0, step0
    waited = time.perf_counter()
    for batch in loader:
        data_s += time.perf_counter() - waited  # time this rank waited for the loader's next batch
        values = train_step(model, teacher, loss_fn, opt, sched, scaler, batch, device, use_amp, t.grad_clip,
                            loss_fn.tc_scale(step, t.max_steps))
        step += 1
        samples += len(batch["img0"]) * world
        for k, v in values.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        if (step - step0) % t.log_every == 0 or step % t.log_every == 0 or step - step0 == steps:  # the only reads
            _check_finite(sums, checked, step)
            checked, now = step, floats(values)  # of the device's values
            if rank == 0 and (step - step0) % t.log_every == 0 and step - step0 < steps:  # progress in the epoch
                rate = (step - step0) / max(time.perf_counter() - start, 1e-9)
                log.info("epoch %d step %d/%d (%d/%d of this epoch) loss %.4f %.2f steps/s eta %s", epoch, step,
                         t.max_steps, step - step0, steps, now["total"], rate,
                         _eta((t.max_steps - step) / max(rate, 1e-9)))
            if logger and step % t.log_every == 0:
                logger.metrics(step_metrics(now, sched.get_last_lr()[0]), step=step)
        waited = time.perf_counter()
    if sums and checked != step:
        _check_finite(sums, checked, step)
    elapsed = time.perf_counter() - start
    done = max(step - step0, 1)
    metrics = {f"train_{k}": v / done for k, v in (floats(sums) if sums else {}).items()}
    metrics["samples_per_s"] = samples / max(elapsed, 1e-9)
    metrics["data_ms_per_step"] = 1000 * data_s / done
    if rank == 0:
        log.info("epoch %d step %d/%d loss %.4f (%s) %.1f samples/s, %.1f ms/step waiting for data", epoch, step,
                 t.max_steps, metrics.get("train_total", float("nan")), epoch_terms(metrics),
                 metrics["samples_per_s"], metrics["data_ms_per_step"])
        if logger:
            logger.metrics({"train/samples_per_s": metrics["samples_per_s"],
                            "train/data_ms_per_step": metrics["data_ms_per_step"],
                            "train/epoch_logit_norm": metrics["train_logit_norm"]}, step=step)
    return metrics


def _check_finite(sums: dict[str, torch.Tensor], first: int, last: int) -> None:
    """Raise when a loss term of steps first+1..last was not finite (their sum is not): checked at every log point
    and at the epoch's end, where the loop reads the device anyway, not after every step."""
    total = float(sums["total"])
    if not math.isfinite(total):
        raise FloatingPointError(f"loss is {total} in steps {first + 1}-{last} "
                                 f"(sums since the epoch began: {floats(sums)})")


def _eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
