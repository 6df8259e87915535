"""One exception tree for the whole engine.

Every error carries the data a caller needs to act on it (which file, which key, which
layer, which port) as attributes, not only in its message, in the spirit of httpx's
``_exceptions.py``. Catch ``FraudstreamError`` to catch everything the engine raises on
purpose; anything else escaping is a bug.
"""

from __future__ import annotations

import re
from pathlib import Path


class FraudstreamError(Exception):
    """Base of every error fraudstream raises on purpose."""


# --- configuration -------------------------------------------------------------------


class ConfigError(FraudstreamError):
    """A configuration value was rejected.

    ``source`` names where the value came from: a file path or an environment variable.
    ``line`` is set when the source is a file and the key could be located in it.
    """

    def __init__(self, source: str, key: str, reason: str, line: int | None = None) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {key}: {reason}")


class ConfigErrors(ConfigError):
    """Several configuration values were rejected at once; ``errors`` holds each."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.source, first.key, first.reason, first.line)
        self.args = ("\n".join(str(e) for e in errors),)


class RuleFileError(ConfigError):
    """An ops-edited rule file was rejected; the running engine keeps the last good one."""


# --- dev stack -----------------------------------------------------------------------


class DevstackError(FraudstreamError):
    """The local Kafka + Redis stack could not be managed."""


class PortInUseError(DevstackError):
    def __init__(self, service: str, host: str, port: int) -> None:
        self.service = service
        self.host = host
        self.port = port
        super().__init__(
            f"{service}: port {port} on {host} is already in use by another process; "
            f"stop it or set a different port in the [devstack] settings"
        )


class ServiceStartError(DevstackError):
    def __init__(self, service: str, reason: str, log_path: Path | None = None) -> None:
        self.service = service
        self.reason = reason
        self.log_path = log_path
        tail = f" (see {log_path})" if log_path else ""
        super().__init__(f"{service} did not start: {reason}{tail}")


class ToolMissingError(DevstackError):
    def __init__(self, tool: str, hint: str) -> None:
        self.tool = tool
        self.hint = hint
        super().__init__(f"{tool} is required but was not found: {hint}")


# --- feature store -------------------------------------------------------------------


class FeatureStoreError(FraudstreamError):
    """The online feature store failed; no partial update was left behind."""


class FeatureStoreUnavailable(FeatureStoreError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"feature store unavailable: {reason}")


class FeatureStoreTimeout(FeatureStoreError):
    def __init__(self, timeout_ms: float) -> None:
        self.timeout_ms = timeout_ms
        super().__init__(f"feature store did not answer within {timeout_ms:g} ms")


# --- streaming -----------------------------------------------------------------------


class OutputRejected(FraudstreamError):
    """The Kafka client refused an output even as the first record of an empty batch:
    it is never dropped in silence; the scoring loop fails and its inputs are read
    again."""

    def __init__(self, topic: str, partition: int, size: int) -> None:
        self.topic = topic
        self.partition = partition
        self.size = size
        super().__init__(
            f"a record of {size} bytes for {topic}[{partition}] does not fit an empty batch"
        )


# --- scoring -------------------------------------------------------------------------


class ScoringError(FraudstreamError):
    """A scoring layer failed."""


class LayerError(ScoringError):
    def __init__(self, layer: str, reason: str) -> None:
        self.layer = layer
        self.reason = reason
        super().__init__(f"layer {layer!r} failed: {reason}")


class LayerTimeout(LayerError):
    def __init__(self, layer: str, budget_ms: float, elapsed_ms: float) -> None:
        self.budget_ms = budget_ms
        self.elapsed_ms = elapsed_ms
        super().__init__(layer, f"took {elapsed_ms:.1f} ms, over its {budget_ms:g} ms budget")


class CircuitOpenError(LayerError):
    def __init__(self, layer: str) -> None:
        super().__init__(layer, "circuit breaker is open; layer skipped")


# --- the decider's child process (``worker.decider_process``) --------------------------


class DeciderError(ScoringError):
    """The decider's child process failed."""


class ReportedError(DeciderError):
    """An error raised in the decider's child process, as it reported it: the name of
    its type (``type_name``, what metrics label it by) and its message."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")


class DeciderStartError(ReportedError):
    """The decider's child could not load its engine (``type_name``: the child's error,
    or ``timeout`` / ``exit``): the worker does not start."""


class DeciderProcessDied(DeciderError):
    """The decider's child process stopped; ``exit_code`` as the OS gave it (None when
    only its pipe broke, or it was still being stopped)."""

    def __init__(self, exit_code: int | None) -> None:
        self.exit_code = exit_code
        super().__init__(f"the decider's child process stopped (exit code {exit_code})")


# --- models and artefacts ------------------------------------------------------------


class ModelError(FraudstreamError):
    """A model artefact could not be used."""


class UnsafeArtifactError(ModelError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"refusing to load {path}: {reason}")


class ArtifactDigestError(ModelError):
    def __init__(self, path: str, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(f"{path}: digest {actual} does not match the recorded {expected}")


class FeatureHashMismatch(ModelError):
    def __init__(self, model_hash: str, running_hash: str) -> None:
        self.model_hash = model_hash
        self.running_hash = running_hash
        super().__init__(
            f"model was trained on feature definitions {model_hash}, "
            f"but this engine runs feature definitions {running_hash}"
        )


class DefinitionsMismatchError(FeatureHashMismatch):
    """A trained engine bundle was built on other feature definitions than this code's.

    ``expected`` is the running code's :data:`features.definitions.DEFINITIONS_HASH`,
    ``found`` the bundle's; ``path`` the bundle directory.
    """

    def __init__(self, expected: str, found: str, path: Path | None = None) -> None:
        self.expected = expected
        self.found = found
        self.path = path
        super().__init__(model_hash=found, running_hash=expected)
        where = f" at {path}" if path is not None else ""
        self.args = (
            f"the engine{where} was trained on feature definitions {found}, but this code "
            f"computes feature definitions {expected}: retrain it (`fraudstream train`, or "
            "`fraudstream demo` for a demo engine)",
        )


class EngineBundleMissing(ModelError):
    """No trained engine where the settings (``models.bundle_dir``) say one is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"no trained engine at {path}: run `fraudstream demo` or `fraudstream train`"
        )


class EngineBundleError(ModelError):
    """A directory holds a model, but not a usable engine bundle (``reason`` says why)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} is not a usable engine bundle: {reason}")


class TrainingPeriodError(ModelError):
    """A training period holds too little to learn from (``period``: layers, ensemble or
    ensemble calibration; ``rows`` and ``frauds`` it holds; ``reason`` what to change)."""

    def __init__(self, period: str, rows: int, frauds: int, reason: str) -> None:
        self.period = period
        self.rows = rows
        self.frauds = frauds
        self.reason = reason
        super().__init__(f"the {period} period has {rows} rows and {frauds} known frauds: {reason}")


# --- model rollout -------------------------------------------------------------------


class RolloutFileError(ConfigError):
    """The ops-edited rollout file (canary share, shadow) was rejected; the running
    worker keeps the last good rollout."""


class NoChampionError(ModelError):
    """The registry has no version behind the ``champion`` alias to start scoring with."""

    def __init__(self, model_name: str, tracking_uri: str) -> None:
        self.model_name = model_name
        self.tracking_uri = tracking_uri
        # A database URI may carry a password: never in the message.
        where = re.sub(r"//[^/@]*@", "//***@", tracking_uri)
        super().__init__(
            f"model {model_name!r} in the registry at {where} has no champion: "
            "register a version and promote it (`fraudstream models promote`), or set "
            'models.source = "bundle"'
        )


class VersionDefinitionsMismatch(DefinitionsMismatchError):
    """A registered model version carries other feature definitions than this code's
    (``model_name``, ``version``; ``expected`` and ``found`` as for the parent)."""

    def __init__(self, model_name: str, version: int, expected: str, found: str) -> None:
        super().__init__(expected, found)
        self.model_name = model_name
        self.version = version
        self.args = (
            f"model {model_name!r} version {version} was trained on feature definitions "
            f"{found or '(none recorded)'}, but this code computes feature definitions "
            f"{expected}: refusing it",
        )
