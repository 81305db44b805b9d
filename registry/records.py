"""The registry's records: every fact clreg keeps, as pydantic models serialised to JSON.

Records are frozen. A ModelVersion is written once; its status lives beside it in the store, so the
record itself stays immutable while the version moves candidate -> blessed -> production.

Every record carries `schema_version`. Raise SCHEMA_VERSION when a record's meaning changes; this code
reads records up to its own SCHEMA_VERSION and refuses newer ones (a rolled-back daemon must not
misread what a newer one wrote).
"""

from __future__ import annotations

import re
import time
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clreg.registry.errors import UnreadableRecord

SCHEMA_VERSION = 1
OLD_PACKAGES = frozenset({"registry", "learner", "monitor", "serving"})  # top-level names before 0.2
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
BATCH_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def check_name(value: str) -> str:
    """Validate a model or site name before it reaches a key or a path."""
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"
        )
    return value


def check_batch_id(value: str) -> str:
    """Validate a batch id (the sha256 hex digest of the batch bytes)."""
    if not BATCH_ID_PATTERN.fullmatch(value):
        raise ValueError(f"invalid batch id {value!r}: expected 64 lowercase hex characters")
    return value


Name = Annotated[str, AfterValidator(check_name)]
BatchId = Annotated[str, AfterValidator(check_batch_id)]


def now() -> float:
    """Wall-clock seconds since the epoch: the one clock every record uses."""
    return time.time()


class Record(BaseModel):
    """Base config for records: frozen, strict about unknown fields, refusing schemas newer than this code."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _known_schema(cls, data: Any) -> Any:
        # Checked before the fields: a newer record's unknown fields would otherwise hide the real cause.
        version = data.get("schema_version", SCHEMA_VERSION) if isinstance(data, dict) else SCHEMA_VERSION
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ValueError(f"{cls.__name__} has schema_version {version}, newer than the {SCHEMA_VERSION} this "
                             "clreg reads; upgrade clreg to read it")
        return data


RecordT = TypeVar("RecordT", bound=BaseModel)


def parse(cls: type[RecordT], raw: str | bytes) -> RecordT:
    """Read a stored record; a newer schema or damaged JSON raises UnreadableRecord, never half a record."""
    try:
        return cls.model_validate_json(raw)
    except ValidationError as e:
        detail = e.errors(include_url=False)[0]
        where = ".".join(map(str, detail["loc"]))
        msg = str(detail["msg"]).removeprefix("Value error, ")
        raise UnreadableRecord(f"stored {cls.__name__} cannot be read: {msg}{f' (at {where})' if where else ''}") from e


class InputSpec(Record):
    """What a model accepts: images [N, channels, height, width] and labels 0..classes-1."""

    channels: int = Field(ge=1, le=16)
    height: int = Field(ge=4, le=1024)
    width: int = Field(ge=4, le=1024)
    classes: int = Field(ge=2, le=1000)


class Readiness(Record):
    """When a version counts as validated at a site, and what serving does with requests for one that is not."""

    accuracy_floor: float = Field(default=0.8, ge=0, le=1)  # the 95% interval's lower end must reach it
    # calibrated (cross-fitted) calibration error at most this: the debiased RMS error where the version has
    # it, else ECE
    ece_limit: float = Field(default=0.1, gt=0, le=1)
    policy: Literal["warn", "refuse"] = "warn"  # warn: answer with "validated": false; refuse: 409
    # the label-free accuracy estimate on served answers this far under the held-out accuracy raises the
    # ClregSiteServedBelowValidation alert (exported as clreg_model_estimate_drop_limit)
    estimate_drop: float = Field(default=0.05, gt=0, le=1)
    # The task metric's 95% interval (versions that record it) is judged, never accuracy alone at a binary site:
    # its low end must reach metric_floor (None: accuracy_floor for accuracy and balanced_accuracy, 0.8 for
    # auroc) and beat what answering every image the same class scores; for expected_cost its high end must stay
    # under that constant answer's cost and, when set, under cost_limit (per case, in the costs' unit).
    metric_floor: float | None = Field(default=None, ge=0, le=1)
    cost_limit: float | None = Field(default=None, gt=0)
    # Each class of a binary site's held-out set needs this many samples: fewer, and the site is not validated
    # and a threshold chosen by cost there is not recommended (nor set by `clreg sites threshold --set`).
    min_positives: int = Field(default=10, ge=0)
    min_negatives: int = Field(default=10, ge=0)


class ShadowPolicy(Record):
    """Mirror a candidate that passed its gate on live traffic before it may replace production."""

    share: float = Field(default=0.2, gt=0, le=1)  # of production's requests also answered by the candidate
    min_requests: int = Field(default=200, ge=1)  # mirrored requests before a verdict; fewer: the candidate waits
    min_agreement: float = Field(default=0.95, ge=0, le=1)  # of mirrored samples answered as production does


class CanaryPolicy(Record):
    """Let a candidate answer a share of live requests before production moves (registry/canary.py): only requests
    naming a site it is validated at; promoted or rolled back by its error rate and its label-free estimate."""

    share: float = Field(default=0.1, gt=0, le=1)  # of the requests of each site it may answer
    min_requests: int = Field(default=200, ge=1)  # answered by it before a verdict
    max_error_rate: float = Field(default=0.01, ge=0, le=1)  # of its answers that failed (production answered them)
    max_estimate_drop: float = Field(default=0.05, gt=0, le=1)  # its estimate under its validated accuracy, per site


Metric = Literal["accuracy", "balanced_accuracy", "auroc", "expected_cost"]
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ErrorCosts(Record):
    """The cost of a false positive and of a false negative (binary models), in any one unit."""

    false_positive: float = Field(default=1.0, ge=0)
    false_negative: float = Field(default=1.0, ge=0)


class Normalisation(Record):
    """Per-channel mean and standard deviation: x -> (x - mean) / std on images scaled to [0, 1]."""

    mean: list[float] = Field(min_length=1, max_length=16)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _same_length(self) -> Normalisation:
        if len(self.mean) != len(self.std):
            raise ValueError(f"normalisation needs one std per mean, got {len(self.mean)} and {len(self.std)}")
        return self


class RetryPolicy(BaseModel):
    """A batch whose update was rejected waits (BatchStatus.WAITING) and joins the model's next update, until it
    has been in `updates` rejected updates; then it is rejected for good. 1: rejected at once (no retry)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    updates: int = Field(default=3, ge=1, le=100)


class ApprovalPolicy(Record):
    """Who moves production: `auto` (a version that passes its gates is promoted, an admin moves it at will) or
    `approval` (every move waits for `approvers` distinct approvers, none its requester: registry/approvals.py)."""

    mode: Literal["auto", "approval"] = "auto"
    approvers: int = Field(default=1, ge=1, le=5)


class Model(Record):
    name: Name
    factory: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    input: InputSpec
    readiness: Readiness = Readiness()
    shadow: ShadowPolicy | None = None  # None: a candidate that passed its gate is promoted at once
    # The figure the gate, the candidate search, readiness and the console judge by; None: the default for the
    # number of classes (auroc for binary, accuracy otherwise; see `task_metric`).
    metric: Metric | None = None
    costs: ErrorCosts = ErrorCosts()  # what each error costs, for the expected_cost metric and thresholds
    retry: RetryPolicy = RetryPolicy()  # what becomes of a batch whose update's candidate was rejected
    approval: ApprovalPolicy = ApprovalPolicy()  # who moves production (auto: the gate; approval: approvers)
    canary: CanaryPolicy | None = None  # None: no canary; else a share of live requests first (registry/canary.py)
    # Initial weights (an uploaded checkpoint converted to this network, sha256 of an artifact) that the first
    # version trains from; None: the factory's own initialisation. `weights_source`: the file as uploaded.
    weights: Digest | None = None
    weights_source: Digest | None = None
    # Input normalisation applied to every image after scaling to [0, 1], before the network: in training,
    # the gate, calibration and serving alike (e.g. ImageNet's grey mean 0.449, std 0.226 for a pretrained zoo net)
    normalisation: Normalisation | None = None
    created_at: float = Field(default_factory=now)

    @field_validator("factory", mode="before")
    @classmethod
    def _namespaced(cls, value: Any) -> Any:
        """A record stored before the packages moved under `clreg.` names its factory as `learner.models:...`:
        read it as the module it now is (the allow-list trusts `clreg.learner.models` only)."""
        if isinstance(value, str) and value.split(".", 1)[0] in OLD_PACKAGES:
            return f"clreg.{value}"
        return value

    @property
    def task_metric(self) -> Metric:
        """The metric in force: the chosen one, else auroc for a binary model and accuracy otherwise."""
        return self.metric or ("auroc" if self.input.classes == 2 else "accuracy")


class VersionStatus(str, Enum):
    CANDIDATE = "candidate"
    BLESSED = "blessed"
    PRODUCTION = "production"
    REJECTED = "rejected"
    ARCHIVED = "archived"
    ABANDONED = "abandoned"  # left without a verdict by a process that died; closed by the one that resumed
    AWAITING_APPROVAL = "awaiting_approval"  # passed its gates; its model's approvers have not decided yet
    DECLINED = "declined"  # passed its gates, declined by an approver (the reason is in its approval request)


SERVABLE = frozenset({VersionStatus.BLESSED, VersionStatus.PRODUCTION})
NEVER_SERVED = frozenset({VersionStatus.REJECTED, VersionStatus.ARCHIVED, VersionStatus.ABANDONED,
                          VersionStatus.DECLINED})


class Lineage(Record):
    """Where a version came from: enough to retrain it and to audit why it exists."""

    parent: int | None = None
    batch_ids: list[str] = Field(default_factory=list)
    sites: list[str] = Field(default_factory=list)
    train_settings: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    code_version: str = ""
    timings: dict[str, float] = Field(default_factory=dict)
    search: list[dict[str, Any]] = Field(default_factory=list)  # every candidate: settings, validation, chosen
    protocol: int | None = None  # the revision of the model's modification protocol it was made under


class ModelVersion(Record):
    """One immutable model version. `number` is assigned by the store (1, 2, 3 ... without gaps)."""

    model: Name
    number: int = Field(ge=1)
    lineage: Lineage
    artifacts: dict[str, str] = Field(default_factory=dict)  # artifact name -> sha256
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: float = Field(default_factory=now)


class VersionView(BaseModel):
    """A version as listings show it: the immutable record plus its status, aliases and gate report."""

    model_config = ConfigDict(frozen=True)
    version: ModelVersion
    status: VersionStatus
    aliases: list[str] = Field(default_factory=list)
    gate_report_id: str | None = None
    shadow: dict[str, Any] | None = None  # ShadowFigures.summary() for a version mirrored on live traffic


class Site(Record):
    """A hospital pushing data. The token is stored only as its sha256; it may push only to `models`
    (None: every model) and within its quotas."""

    name: Name
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    models: list[Name] | None = None
    replay: bool = True  # its training samples may be remembered and replayed in later updates
    batches_per_day: int = Field(default=1000, ge=1)
    max_bytes: int = Field(default=10 * 2**30, ge=1)  # every upload it stored, all models together
    created_at: float = Field(default_factory=now)


class SiteUsage(BaseModel):
    """What a site has used of its quotas: batches stored today (UTC) and bytes stored in all."""

    model_config = ConfigDict(frozen=True)
    batches_today: int
    bytes: int


class SiteCounts(BaseModel):
    """What one site has pushed for one model: its label prevalence is what a positive answer means there."""

    model_config = ConfigDict(frozen=True)
    batches: int
    samples: int
    class_counts: list[int]

    @property
    def prevalence(self) -> list[float]:
        """Share of each class among the site's labelled samples."""
        return [n / self.samples if self.samples else 0.0 for n in self.class_counts]

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> SiteCounts:
        """From the store's counter hash ("batches", "samples", and one field per class index)."""
        classes = sorted((int(k), int(v)) for k, v in raw.items() if k.isdigit())
        return cls(batches=int(raw.get("batches", 0)), samples=int(raw.get("samples", 0)),
                   class_counts=[n for _, n in classes])


class BatchStatus(str, Enum):
    RECEIVED = "received"
    DRIFT_CHECKED = "drift_checked"
    TRAINING = "training"
    GATED = "gated"
    SHADOWING = "shadowing"  # its candidate passed the gate and is mirrored on live traffic (Model.shadow)
    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"
    # rejected by its update's gate, kept in the pending set to join the model's next update (Model.retry)
    WAITING = "waiting"
    AWAITING_APPROVAL = "awaiting_approval"  # its version passed the gate and waits for the model's approvers
    CANARY = "canary"  # its version answers a share of live requests before production moves (Model.canary)
    LOCKED = "locked"  # a locked test set: never learnt, scored for every version (registry/locked.py)


class Batch(Record):
    """A labelled batch as stored: content-addressed npz plus its deterministic train/held-out split."""

    id: BatchId
    model: Name
    site: Name
    samples: int = Field(ge=1)
    class_counts: list[int]
    train_index: list[int]
    heldout_index: list[int]
    artifact: str  # sha256 of the npz bytes (the id hashes model and site with them: see batches.batch_key)
    source_artifact: str | None = None  # sha256 of the upload it was converted from (a DICOM zip), kept as sent
    locked: bool = False  # a locked test set (pushed with ?locked=true): never trained on, replayed or selected on
    created_at: float = Field(default_factory=now)


FINAL_BATCH = frozenset({BatchStatus.PROMOTED, BatchStatus.REJECTED, BatchStatus.FAILED, BatchStatus.LOCKED})


class BatchState(BaseModel):
    """Where a batch is in the pipeline; mutable, stored apart from the Batch record."""

    model_config = ConfigDict(frozen=True)
    status: BatchStatus
    version: int | None = None
    drift_report_id: str | None = None
    detail: str = ""
    updated_at: float = Field(default_factory=now)
    updates: int = Field(default=0, ge=0)  # updates it joined whose candidate was rejected


class AliasChange(Record):
    """A line of an alias's history: a move (`moved`), or a step of an approval request for one (`requested`,
    `approved`, `declined`: from_version is production then, to_version the version asked for)."""

    model: Name
    alias: Name
    from_version: int | None
    to_version: int
    who: str
    reason: str
    at: float = Field(default_factory=now)
    action: Literal["moved", "requested", "approved", "declined"] = "moved"
    approvers: list[str] = Field(default_factory=list)  # who approved the move (an `approval` model's moves)
    request: str | None = None  # the approval request it belongs to


class Event(Record):
    """One line of the audit trail (a Redis stream entry per model)."""

    id: str = ""
    model: Name
    kind: str
    at: float = Field(default_factory=now)
    data: dict[str, Any] = Field(default_factory=dict)


class Incarnation(Record):
    """One start of a named daemon process: who holds a lease or a stream entry, and how to tell it died.

    `name` is stable across restarts (the stream consumer name); `token` is new at every process start, so a
    restarted daemon recognises what its dead predecessor held.
    """

    name: Name
    host: str = Field(min_length=1, max_length=255)
    pid: int = Field(ge=1)
    token: str = Field(pattern=r"^[0-9a-f]{32}$")
    role: Literal["up", "daemon", "tool"] = "daemon"
    started_at: float = Field(default_factory=now)
