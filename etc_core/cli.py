"""The `etc-pipeline` console script: small tools beside the Ray pipelines in pipelines/.

    etc-pipeline make-dataset --config configs/demo.yaml data.root=/tmp/data data.num_videos=24
"""
from __future__ import annotations

import logging
import sys

from etc_core.config import parse_args
from etc_core.entry import run_entry


def _summary(func) -> str:
    """The first paragraph of a command's docstring, on one line: its --help description."""
    return " ".join(func.__doc__.split("\n\n")[0].split())


def make_dataset(argv: list[str] | None = None) -> int:
    """Write the generated video dataset (frames, labels, exact flow) of the config's `data` section to data.root and
    print its summary."""
    from etc_core.data.generated import write_dataset
    from etc_core.preflight import check_make_dataset

    cfg, _ = parse_args(_summary(make_dataset), argv, prog="etc-pipeline make-dataset")
    check_make_dataset(cfg)  # a real dataset's kind, or data.root holding another dataset: exit 2 before any clip
    print(write_dataset(cfg.data).summary())
    return 0


def _kind_and_root(prog: str, description: str, argv: list[str] | None, kinds: list[str]):
    import argparse

    parser = argparse.ArgumentParser(prog=f"etc-pipeline {prog}", description=description)
    parser.add_argument("--kind", required=True, choices=kinds, help="dataset kind (data.kind)")
    parser.add_argument("--root", required=True, help="the dataset folder (data.root)")
    return parser.parse_args(argv)


def check_dataset(argv: list[str] | None = None) -> int:
    """Validate a dataset tree of any registered kind; print its clips, frames and labelled frames per split (exit 2
    if broken)."""
    from etc_core.data.config import DataConfig
    from etc_core.data.registry import list_datasets, open_dataset
    from etc_core.errors import DatasetError

    args = _kind_and_root("check-dataset", _summary(check_dataset), argv, list_datasets())
    try:
        dataset = open_dataset(DataConfig(kind=args.kind, root=args.root))
    except DatasetError as e:  # a broken tree is a usage problem here: one line naming the path, exit 2
        print(f"DatasetError: {e}", file=sys.stderr)
        return 2
    print(dataset.summary())
    return 0


def download_help(argv: list[str] | None = None) -> int:
    """Print what to fetch for a real dataset (Cityscapes, CamVid) and where to put it (downloads nothing: they need a
    login)."""
    from etc_core.data.registry import download_help as text, downloadable

    args = _kind_and_root("download-help", _summary(download_help), argv, downloadable())
    print(text(args.kind, args.root))
    return 0


def _model_args(parser, *, repeat: bool = False) -> None:
    parser.add_argument("--model", required=True, action="append" if repeat else "store",
                        help="models:/name@alias, models:/name/N, runs:/RUN_ID[/model] or a checkpoint state.pt"
                             + (" (repeatable)" if repeat else ""))


def _device_args(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=8, help="frames per forward pass")
    parser.add_argument("--size", default=None, help="HxW the network sees (default: the input size)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--half", action="store_true", help="float16 forward passes (CUDA only)")


def predict(argv: list[str] | None = None) -> int:
    """Predict every frame of a video, frames directory or glob: OUT/masks/{i:06d}.png (palette) and an overlay."""
    from etc_core.infer.load import load_any, pick_device
    from etc_core.infer.predict import OVERLAYS, Predictor, parse_size, run_predict
    from etc_core.preflight import bad_input, check_predict

    def add(parser) -> None:
        _model_args(parser)
        parser.add_argument("--input", required=True, help="video file (.mp4, .avi, ...), frames directory or glob")
        parser.add_argument("--out", required=True, help="output directory")
        parser.add_argument("--overlay", default="video", choices=OVERLAYS, help="OUT/overlay.mp4, OUT/overlay/*.png")
        _device_args(parser)

    cfg, args = parse_args(_summary(predict), argv, add, prog="etc-pipeline predict")
    size = parse_size(args.size)
    check_predict(cfg, args)  # --input, --out, the store: before the model loads
    with bad_input():
        model, meta = load_any(args.model, cfg.mlflow.tracking_uri, cfg.s3.access)
    predictor = Predictor(model, pick_device(args.device), args.half, size)
    res = run_predict(predictor, int(meta["num_classes"]), args.input, args.out, args.batch_size, args.overlay)
    print(f"{res.num_frames} frames -> {res.masks_dir}" + (f", overlay {res.overlay}" if res.overlay else ""))
    print(f"throughput {res.fps:.1f} frames/s end to end, {res.model_fps:.1f} frames/s in the model "
          f"({predictor.device}{', float16' if args.half else ''}, batch {args.batch_size})")
    return 0


def evaluate(argv: list[str] | None = None) -> int:
    """Compare models on a shard set, a dataset or a video: mIoU, TC, latency and FPS in one table."""
    from etc_core.data.config import DataConfig
    from etc_core.data.registry import list_datasets
    from etc_core.infer.evaluate import evaluate_models, format_table, write_json
    from etc_core.infer.load import load_any, pick_device
    from etc_core.infer.predict import parse_size
    from etc_core.preflight import bad_input, check_evaluate
    from etc_core.errors import ConfigError

    def add(parser) -> None:
        _model_args(parser, repeat=True)
        parser.add_argument("--shards", default=None, help="shard set URI (local or s3://) from the flow stage")
        parser.add_argument("--data", default=None, help="dataset directory: generated (etc-pipeline make-dataset) "
                                                         "or of --kind")
        parser.add_argument("--kind", default=None, choices=list_datasets(),
                            help="dataset kind of --data (default: data.kind)")
        parser.add_argument("--input", default=None, help="unlabelled video, frames directory or glob (TC only)")
        parser.add_argument("--split", default="val", help="split of --shards / --data")
        parser.add_argument("--flow-model", default=None,
                            help="flow for TC: dis (OpenCV's DIS, no weights, preset flow.dis_preset) or a ptlflow "
                                 "model (default for --input: dis when flow.source=dis, else flow.model; for --data: "
                                 "the exact flow)")
        parser.add_argument("--flow-weights", default=None,
                            help="the ptlflow model's checkpoint (default: flow.weights, i.e. none)")
        parser.add_argument("--json", default=None, help="also write the table as JSON here")
        _device_args(parser)

    cfg, args = parse_args(_summary(evaluate), argv, add, prog="etc-pipeline evaluate")
    size = parse_size(args.size)
    flow_model = args.flow_model or (("dis" if cfg.flow.source == "dis" else cfg.flow.model) if args.input else None)
    flow_weights = args.flow_weights or cfg.flow.weights
    if flow_model == "dis":  # DIS has a preset, not weights: the table and evaluate_models name it in their place
        if args.flow_weights:
            raise ConfigError("--flow-weights: dis has no weights; choose its preset with flow.dis_preset=PRESET")
        flow_weights = cfg.flow.dis_preset
    data = None
    if args.data is not None:  # the config's data section, pointed at --data (with --kind)
        data = DataConfig.model_validate({**cfg.data.model_dump(), "kind": args.kind or cfg.data.kind,
                                          "root": args.data})
    check_evaluate(cfg, args, data, flow_model, flow_weights)  # the source, --json, the store: before the models
    with bad_input():
        models = [(spec, *load_any(spec, cfg.mlflow.tracking_uri, cfg.s3.access)) for spec in args.model]
    result = evaluate_models(models, shards=args.shards, data=data, video=args.input, split=args.split,
                             flow_model=flow_model, flow_weights=flow_weights,
                             device=pick_device(args.device), half=args.half, size=size, batch_size=args.batch_size,
                             s3=cfg.s3.access)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def export(argv: list[str] | None = None) -> int:
    """Export a model to TorchScript and/or ONNX, checking each against the eager model (exit 1 on a mismatch)."""
    from etc_core.infer.export import MIN_OPSET, export_model
    from etc_core.infer.load import load_any
    from etc_core.infer.predict import parse_size
    from etc_core.preflight import bad_input, check_export

    def add(parser) -> None:
        _model_args(parser)
        parser.add_argument("--out", required=True, help="output directory")
        parser.add_argument("--format", default="both", choices=["torchscript", "onnx", "both"])
        parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (default {MIN_OPSET})")
        parser.add_argument("--size", default=None, help="HxW of the ONNX input (default: data.height x data.width)")
        parser.add_argument("--tolerance", type=float, default=1e-3, help="max abs logit difference allowed")

    cfg, args = parse_args(_summary(export), argv, add, prog="etc-pipeline export")
    size = parse_size(args.size) or (cfg.data.height, cfg.data.width)
    formats = ("torchscript", "onnx") if args.format == "both" else (args.format,)
    check_export(cfg, args, formats)  # the formats, --out, the store: before the model loads
    with bad_input():
        model, meta = load_any(args.model, cfg.mlflow.tracking_uri, cfg.s3.access)
    for name in ("onnx_ir", "onnxscript"):  # their INFO lines narrate every graph pass
        logging.getLogger(name).setLevel(logging.WARNING)
    results = export_model(model, meta, args.out, formats, args.opset, size, args.tolerance)
    for r in results:
        print(f"{r.format:<11} {r.path}: max abs diff {r.max_abs_diff:.2e} (tolerance {r.tolerance:.0e}) "
              f"{'ok' if r.ok else 'MISMATCH'}")
    return 0 if all(r.ok for r in results) else 1

def copy_store(argv: list[str] | None = None) -> int:
    """Copy the config's MLflow experiment (its runs with their metrics, pictures and artifacts, its logged models)
    and the model versions registered from it, aliases included, to another tracking store such as a server; a rerun
    copies only what is new."""
    from etc_core.errors import ConfigError
    from etc_core.preflight import bad_input
    from etc_core.tracking.config import local_store_path
    from etc_core.tracking.copy import copy_store as copy
    from etc_core.tracking.mlflow import redact

    def add(parser) -> None:
        parser.add_argument("--to", required=True, help="the destination's tracking URI: http://HOST:5000 (a server), "
                                                        "or sqlite:///path/mlflow.db")
        parser.add_argument("--artifact-root", default=None,
                            help="for a destination store on this disk: where a new experiment keeps its artifacts "
                                 "(default: mlartifacts/ beside it); a server keeps them where it was told to")

    cfg, args = parse_args(_summary(copy_store), argv, add, prog="etc-pipeline copy-store")
    src, root = cfg.mlflow.tracking_uri, args.artifact_root
    if root is None and (db := local_store_path(args.to)) is not None:
        root = str(db.parent / "mlartifacts")
    with bad_input():  # a missing or unreachable store, an unknown experiment: one line, exit 2
        if args.to == src:
            raise ConfigError(f"--to {redact(args.to)}: the store the config reads from (mlflow.tracking_uri)")
        report = copy(src, args.to, cfg.mlflow.experiment, root)
    print(f"{redact(src)} -> {redact(args.to)}, experiment {cfg.mlflow.experiment}: {report.summary()}")
    print(f"later runs log there with mlflow.tracking_uri={redact(args.to)} (or MLFLOW_TRACKING_URI)")
    return 0


COMMANDS = {"make-dataset": make_dataset, "check-dataset": check_dataset, "download-help": download_help,
            "predict": predict, "evaluate": evaluate, "export": export, "copy-store": copy_store}


def usage() -> str:
    """The top-level usage: the commands, and the registered dataset kinds and flow sources."""
    from etc_core.data.registry import list_datasets
    from etc_core.flow.sources import list_flow_sources

    return (f"usage: etc-pipeline {{{','.join(COMMANDS)}}} [--config PATH] [section.key=value ...]\n"
            f"dataset kinds (data.kind): {', '.join(list_datasets())}\n"
            f"flow sources (flow.source): {', '.join(list_flow_sources())}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    run_entry(COMMANDS[argv[0]], argv[1:])


if __name__ == "__main__":
    main()
