"""The model registry on MLflow: a run per registration, a model version per run.

Each registration is one MLflow run (params, metrics, the bundle under ``bundle/``,
plots under ``plots/``) and one version of the registered model whose source is that
run's ``bundle/`` artefacts. Champion and challenger are registered model *aliases*
(MLflow's stages are deprecated). The promotion history is kept as registered model
tags ``history.000001``, ``history.000002``...: one small tag per event, so it never
outgrows MLflow's tag size limit and reads back in order.

``mlflow`` is imported lazily: it takes over a second to import, and the CLI and the
worker must not pay that unless they talk to the registry.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from models.artifacts import MANIFEST_NAME, sha256_hex
from training.errors import ModelVersionNotFound
from training.registry import (
    BUNDLE_PATH,
    HASH_TAG,
    MANIFEST_TAG,
    PLOTS_PATH,
    Clock,
    GatedRegistry,
    ModelVersion,
    PromotionRecord,
    RegistryConfig,
    bundle_files,
    clean_metrics,
    str_params,
    verify_download,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion as MlflowModelVersion
    from mlflow.tracking import MlflowClient

_HISTORY_PREFIX = "history."
_SQLITE = "sqlite:///"


def default_artifact_root(config: RegistryConfig) -> Path | None:
    """``artifact_root``, else ``mlartifacts`` beside a sqlite database (MLflow's own
    default is ``./mlruns`` in whatever directory the process happens to run in)."""
    if config.artifact_root is not None:
        return config.artifact_root.resolve()
    if config.tracking_uri.startswith(_SQLITE):
        return Path(config.tracking_uri[len(_SQLITE) :]).resolve().parent / "mlartifacts"
    return None


class MlflowRegistry(GatedRegistry):
    def __init__(self, config: RegistryConfig, clock: Clock | None = None) -> None:
        from mlflow.tracking import MlflowClient

        super().__init__(config, clock)
        self._client: MlflowClient = MlflowClient(
            tracking_uri=config.tracking_uri,
            registry_uri=config.registry_uri or config.tracking_uri,
        )
        self._name = config.model_name

    # --- registration ----------------------------------------------------------------

    def register(
        self,
        bundle_dir: Path,
        metrics: Mapping[str, float],
        params: Mapping[str, object],
        definitions_hash: str,
        *,
        tags: Mapping[str, str] | None = None,
        plots: Sequence[Path] = (),
    ) -> int:
        from mlflow.entities import Metric, Param

        files = bundle_files(bundle_dir)  # refuses pickles before anything is logged
        clean = clean_metrics(metrics)
        version_tags = {**(tags or {}), HASH_TAG: definitions_hash}
        version_tags[MANIFEST_TAG] = sha256_hex(files[MANIFEST_NAME])
        run = self._client.create_run(self._experiment_id(), tags=version_tags)
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            self._client.log_batch(
                run_id,
                metrics=[Metric(k, v, now, 0) for k, v in sorted(clean.items())],
                params=[Param(k, v) for k, v in sorted(str_params(params).items())],
            )
            self._client.log_artifacts(run_id, str(bundle_dir), BUNDLE_PATH)
            for plot in plots:
                self._client.log_artifact(run_id, str(plot), PLOTS_PATH)
        except BaseException:
            self._client.set_terminated(run_id, status="FAILED")
            raise
        self._client.set_terminated(run_id)
        self._ensure_model()
        created = self._client.create_model_version(
            self._name,
            source=f"{run.info.artifact_uri}/{BUNDLE_PATH}",
            run_id=run_id,
            tags=version_tags,
        )
        return int(created.version)

    def _experiment_id(self) -> str:
        found = self._client.get_experiment_by_name(self.config.experiment)
        if found is not None:
            return str(found.experiment_id)
        root = default_artifact_root(self.config)
        return str(
            self._client.create_experiment(
                self.config.experiment, artifact_location=root.as_uri() if root else None
            )
        )

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(self._name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    # --- reading -----------------------------------------------------------------------

    def _model_version(self, version: int) -> MlflowModelVersion:
        """MLflow's record of ``version``; ``ModelVersionNotFound`` when there is none."""
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_model_version(self._name, str(version))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelVersionNotFound(self._name, version) from exc
            raise

    def get(self, version: int) -> ModelVersion:
        mv = self._model_version(version)
        run = self._client.get_run(mv.run_id) if mv.run_id else None
        tags = dict(mv.tags)
        return ModelVersion(
            version=int(mv.version),
            definitions_hash=tags.get(HASH_TAG, ""),
            metrics=dict(run.data.metrics) if run else {},
            params=dict(run.data.params) if run else {},
            tags=tags,
            aliases=tuple(sorted(mv.aliases)),
        )

    def list_versions(self) -> list[ModelVersion]:
        found = self._client.search_model_versions(f"name='{self._name}'")
        return [self.get(v) for v in sorted(int(mv.version) for mv in found)]

    def history(self) -> list[PromotionRecord]:
        tags = self._model_tags()
        keys = sorted(k for k in tags if k.startswith(_HISTORY_PREFIX))
        return [PromotionRecord.from_json(tags[k]) for k in keys]

    def download(self, version: int, dst_dir: Path | None = None) -> Path:
        expected = self._model_version(version).tags.get(MANIFEST_TAG)
        uri = self._client.get_model_version_download_uri(self._name, str(version))
        from mlflow.artifacts import download_artifacts

        dst = Path(dst_dir or tempfile.mkdtemp(prefix="fraudstream-model-"))
        local = Path(download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        verify_download(local, expected)
        return local

    def plot_names(self, version: int) -> list[str]:
        run_id = self._model_version(version).run_id
        if not run_id:
            return []
        found = self._client.list_artifacts(run_id, PLOTS_PATH)
        return sorted(Path(a.path).name for a in found if not a.is_dir)

    def _model_tags(self) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self._client.get_registered_model(self._name).tags)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise

    # --- primitives the gate works through ---------------------------------------------

    def _alias_target(self, alias: str) -> int | None:
        from mlflow.exceptions import MlflowException

        try:
            aliases = self._client.get_registered_model(self._name).aliases
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        target = aliases.get(alias)
        return None if target is None else int(target)

    def _set_alias(self, alias: str, version: int) -> None:
        self._client.set_registered_model_alias(self._name, alias, str(version))

    def _delete_alias(self, alias: str) -> None:
        self._client.delete_registered_model_alias(self._name, alias)

    def _tag_version(self, version: int, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_model_version_tag(self._name, str(version), key, value)

    def _append_history(self, record: PromotionRecord) -> None:
        seq = len(self.history()) + 1
        key = f"{_HISTORY_PREFIX}{seq:06d}"
        self._client.set_registered_model_tag(self._name, key, record.to_json())
