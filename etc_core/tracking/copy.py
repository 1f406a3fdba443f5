"""Copy one experiment of an MLflow store (its runs, their params, metric histories, tags, inputs and artifacts, its
logged models) and the registered model versions trained in it to another store: `etc-pipeline copy-store`, how the
demo's SQLite store (runs/mlflow.db) moves to a tracking server.

MLflow 3.17 has no command for this (`mlflow migrate-filestore` only turns a file store into SQLite), so it is
done here with MlflowClient, one client per store. Every copy is tagged `etc.copied_from` with the source's id:
a rerun skips what was copied, and redoes a run whose copy was cut short (still RUNNING at the destination). A
registered model's alias (champion, candidate) moves with its version unless the destination already gives that
alias to a version of its own. Nothing at the source changes.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from etc_core.errors import TrackingError
from etc_core.tracking.config import MlflowConfig

log = logging.getLogger(__name__)

COPIED_FROM = "etc.copied_from"
PARENT = "mlflow.parentRunId"
CHUNK = 500  # values per log_batch request (MLflow's own limit is 1000 metrics, 100 params)


@dataclass
class CopyReport:
    runs: int = 0  # copied now
    runs_there: int = 0  # copied before (skipped)
    logged_models: int = 0
    versions: list[str] = field(default_factory=list)  # `name/version` at the destination, copied now
    versions_there: int = 0
    aliases: list[str] = field(default_factory=list)  # `name@alias` set at the destination
    aliases_kept: list[str] = field(default_factory=list)  # the destination had its own version there

    def summary(self) -> str:
        return (f"runs: {self.runs} copied, {self.runs_there} there before; logged models: {self.logged_models} "
                f"copied; model versions: {len(self.versions)} copied ({', '.join(self.versions) or '-'}), "
                f"{self.versions_there} there before; aliases set: {', '.join(self.aliases) or '-'}"
                + (f"; aliases the destination kept: {', '.join(self.aliases_kept)}" if self.aliases_kept else ""))


def copy_store(src_uri: str, dst_uri: str, experiment: str, artifact_root: str | None = None) -> CopyReport:
    """Copy `experiment` and the model versions registered from its runs from src_uri to dst_uri (the experiment is
    created there when missing; a store on this disk keeps its artifacts under artifact_root). TrackingError names a
    store that is missing or does not answer, or an experiment the source does not have."""
    from mlflow import MlflowClient

    from etc_core.tracking import mlflow as tracking

    tracking.check_store(src_uri)  # a read: creates no store
    src = MlflowClient(src_uri, registry_uri=src_uri)
    exp = src.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"{tracking.redact(src_uri)}: no experiment {experiment!r} (mlflow.experiment=NAME)")
    dst_cfg = MlflowConfig(tracking_uri=dst_uri, experiment=experiment,
                           **({"artifact_root": artifact_root} if artifact_root else {}))
    dst_exp = tracking.setup(dst_cfg)  # created with this project's tags and artifact location when missing
    dst = MlflowClient(dst_uri, registry_uri=dst_uri)
    for key, value in exp.tags.items():
        dst.set_experiment_tag(dst_exp, key, value)
    report = CopyReport()
    runs = _copy_runs(src, dst, src_uri, exp.experiment_id, dst_exp, report)
    models = _copy_logged_models(src, dst, src_uri, exp.experiment_id, dst_exp, runs, report)
    _copy_versions(src, dst, runs, models, report)
    return report


def _pages(search, **kwargs) -> list:
    """Every item of a paged MLflow search."""
    found, token = [], None
    while True:
        page = search(**kwargs, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def _copied(items, key) -> dict[str, object]:
    """{source id: destination item} for the items carrying COPIED_FROM in their tags (key(item): its tags)."""
    return {key(item)[COPIED_FROM]: item for item in items if COPIED_FROM in key(item)}


def _copy_runs(src, dst, src_uri: str, exp_id: str, dst_exp: str, report: CopyReport) -> dict[str, str]:
    """Copy every finished run, parents before children; returns {source run id: destination run id}."""
    runs = _pages(src.search_runs, experiment_ids=[exp_id], max_results=1000, order_by=["attributes.start_time ASC"])
    there = _copied(_pages(dst.search_runs, experiment_ids=[dst_exp], max_results=1000), lambda r: r.data.tags)
    ids: dict[str, str] = {}
    for run in runs:
        old = there.get(run.info.run_id)
        if old is not None and old.info.status == run.info.status:
            ids[run.info.run_id] = old.info.run_id
            report.runs_there += 1
            continue
        if run.info.status == "RUNNING":
            log.warning("run %s is still running: not copied (rerun copy-store when it has ended)", run.info.run_id)
            continue
        if old is not None:  # a copy cut short: start it again
            dst.delete_run(old.info.run_id)
        ids[run.info.run_id] = _copy_run(src, dst, src_uri, run, dst_exp, ids)
        report.runs += 1
    return ids


def _copy_run(src, dst, src_uri: str, run, dst_exp: str, ids: dict[str, str]) -> str:
    """One run: tags (its parent's id mapped), params, every metric's history, inputs, artifacts, then its end."""
    import mlflow
    from mlflow.entities import Metric, Param

    tags = {**run.data.tags, COPIED_FROM: run.info.run_id}
    if PARENT in tags:
        tags[PARENT] = ids.get(tags[PARENT], tags[PARENT])
    new = dst.create_run(dst_exp, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name).info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    for i in range(0, len(params), 100):
        dst.log_batch(new, params=params[i:i + 100])
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in run.data.metrics
               for m in src.get_metric_history(run.info.run_id, key)]
    for i in range(0, len(metrics), CHUNK):
        dst.log_batch(new, metrics=metrics[i:i + CHUNK])
    if run.inputs and run.inputs.dataset_inputs:
        dst.log_inputs(new, datasets=run.inputs.dataset_inputs)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=tmp, tracking_uri=src_uri)
        if any(Path(local).iterdir()):
            dst.log_artifacts(new, local)
    dst.set_terminated(new, run.info.status, run.info.end_time)
    return new


def _copy_logged_models(src, dst, src_uri: str, exp_id: str, dst_exp: str, runs: dict[str, str],
                        report: CopyReport) -> dict[str, str]:
    """Copy the experiment's ready LoggedModels of copied runs (params, tags, metrics, artifacts with their MLmodel
    naming the new ids); returns {source model id: destination model id}."""
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

    there = _copied(_pages(dst.search_logged_models, experiment_ids=[dst_exp]), lambda m: m.tags)
    ids: dict[str, str] = {}
    for model in _pages(src.search_logged_models, experiment_ids=[exp_id]):
        run = runs.get(model.source_run_id or "")
        if model.status != LoggedModelStatus.READY or run is None:
            continue
        if model.model_id in there:
            ids[model.model_id] = there[model.model_id].model_id
            continue
        new = dst.create_logged_model(dst_exp, name=model.name, source_run_id=run, model_type=model.model_type,
                                      tags={**model.tags, COPIED_FROM: model.model_id}, params=model.params).model_id
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=tmp,
                                                        tracking_uri=src_uri)
            _rename_ids(Path(local) / "MLmodel", new, run)
            dst.log_model_artifacts(new, local)
        metrics = [Metric(m.key, m.value, m.timestamp, m.step, model_id=new, dataset_name=m.dataset_name,
                          dataset_digest=m.dataset_digest, run_id=run) for m in model.metrics or []]
        for i in range(0, len(metrics), CHUNK):
            dst.log_batch(run, metrics=metrics[i:i + CHUNK])
        dst.log_outputs(run, [LoggedModelOutput(new, step=0)])
        dst.finalize_logged_model(new, "READY")
        ids[model.model_id] = new
        report.logged_models += 1
    return ids


def _rename_ids(mlmodel: Path, model_id: str, run_id: str) -> None:
    """The copied MLmodel file names the destination's LoggedModel and run, not the source's."""
    import yaml

    if not mlmodel.is_file():
        return
    spec = yaml.safe_load(mlmodel.read_text())
    spec.update({k: v for k, v in (("model_id", model_id), ("run_id", run_id)) if k in spec})
    mlmodel.write_text(yaml.safe_dump(spec, sort_keys=False))


def _copy_versions(src, dst, runs: dict[str, str], models: dict[str, str], report: CopyReport) -> None:
    """Register, in version order, every version whose run was copied; then its aliases (unless taken there)."""
    from mlflow.exceptions import MlflowException

    from etc_core.tracking.registry import logged_model_id

    for registered in _pages(src.search_registered_models, max_results=100):
        name = registered.name
        versions = sorted((v for v in src.search_model_versions(f"name='{name}'") if v.run_id in runs),
                          key=lambda v: int(v.version))
        if not versions:
            continue
        try:
            dst.get_registered_model(name)
        except MlflowException:
            dst.create_registered_model(name, tags=registered.tags, description=registered.description)
        there = _copied(dst.search_model_versions(f"name='{name}'"), lambda v: v.tags)
        mapped: dict[str, str] = {}
        for mv in versions:
            key = f"{name}/{mv.version}"
            if key in there:
                mapped[str(mv.version)] = str(there[key].version)
                report.versions_there += 1
                continue
            model_id = models.get(logged_model_id(mv) or "")
            source = f"models:/{model_id}" if model_id else mv.source.replace(mv.run_id, runs[mv.run_id])
            new = dst.create_model_version(name, source, run_id=runs[mv.run_id], model_id=model_id,
                                           tags={**mv.tags, COPIED_FROM: key}, description=mv.description)
            mapped[str(mv.version)] = str(new.version)
            report.versions.append(f"{name}/{new.version}")
        taken = dst.get_registered_model(name).aliases or {}
        for alias, version in (registered.aliases or {}).items():
            if str(version) not in mapped:
                continue
            if str(taken.get(alias)) == mapped[str(version)]:  # set by an earlier copy
                continue
            if alias in taken:
                report.aliases_kept.append(f"{name}@{alias}")
                continue
            dst.set_registered_model_alias(name, alias, mapped[str(version)])
            report.aliases.append(f"{name}@{alias}")
