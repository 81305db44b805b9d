"""Recent prediction inputs per model: a capped Redis stream the scheduled drift check reads before labels exist.

    {p}:inputs:{m}        stream  one image per entry: {"x": raw float32 bytes, "shape": "C,H,W", "version": n,
                                  "site": the site that answered it ("" for none)}
    {p}:inputs:{m}:seen   string  digest of the last window the watch checked (so an idle model is not re-checked)
    {p}:inputs:{m}:sites  set     sites whose answers' confidences are kept
    {p}:inputs:{m}:confidence:{s}  list  the calibrated probability that each recent answer at site s is right
    {p}:inputs:{m}:checked  hash   site -> the watch's checked estimate there (a CheckedEstimate as JSON)

Images are stored as raw little-endian float32 bytes plus their shape, never pickled, and read back with
np.frombuffer. The stream is trimmed to about `cap` entries on every write (Redis' approximate MAXLEN).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import redis
from pydantic import BaseModel, ConfigDict, Field

from clreg.registry.connection import StoreConfig, connect, translated
from clreg.registry.records import check_name

DTYPE = np.dtype("<f4")


class InputLogConfig(BaseModel):
    """How many prediction inputs are kept per model and what share of requests' images is recorded."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)  # share of images recorded
    max_per_request: int = Field(default=32, ge=1)  # a 10,000-image request must not flood the stream
    cap: int = Field(default=2000, ge=10)  # entries kept per model


Images = dict[str, list[tuple[np.ndarray, int | None, str | None]]]  # model -> (x, version, site) per request


class CheckedEstimate(BaseModel):
    """A site's accuracy estimated by the watch on its recent inputs, with the share of answers that stayed the
    same under the inputs' own BatchNorm statistics (learner.estimate.checked_accuracy)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    estimate: float = Field(ge=0, le=1)
    stable: float = Field(ge=0, le=1)
    answers: int = Field(ge=1)
    version: int = Field(ge=1)
    at: float = Field(default_factory=time.time)


class InputLog:
    """Record sampled prediction inputs and read the most recent ones back as one array."""

    def __init__(self, store: StoreConfig, cfg: InputLogConfig, client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self._prefix = store.prefix
        # Binary-safe: the registry's own client decodes replies as text, which raw float bytes are not.
        self._r = client if client is not None else connect(store, decode_responses=False)
        self._rng = np.random.default_rng()

    def _key(self, model: str, *parts: str) -> str:
        return ":".join([self._prefix, "inputs", check_name(model), *parts])

    def sample(self, x: np.ndarray) -> np.ndarray:
        """The images of one request that get recorded: a random share, at most max_per_request."""
        if not self.cfg.enabled or self.cfg.sample_rate == 0.0:
            return x[:0]
        keep = np.flatnonzero(self._rng.random(len(x)) < self.cfg.sample_rate)
        if len(keep) > self.cfg.max_per_request:
            keep = np.sort(self._rng.choice(keep, size=self.cfg.max_per_request, replace=False))
        return x[keep]

    def record(self, model: str, x: np.ndarray, version: int | None = None, site: str | None = None) -> int:
        """Append each image of x ([N, C, H, W]) as one entry, trimming to about `cap`; the count written."""
        if x.ndim != 4:
            raise ValueError(f"inputs must be [N, C, H, W], got shape {x.shape}")
        if len(x):
            self.write({model: [(x, version, site)]}, {})
        return len(x)

    def record_confidence(self, model: str, site: str, confidence: np.ndarray) -> None:
        """Keep the newest `cap` answers' probabilities of being right at a site (the label-free estimate's input)."""
        if len(confidence):
            self.write({}, {(model, site): [float(c) for c in confidence]})

    @translated
    def write(self, images: Images, confidences: dict[tuple[str, str], list[float]]) -> None:
        """What a replica gathered since its last write, in one round trip: per model, its images ([N, C, H, W]
        with the version and the site that answered them; the newest `cap` at most), and per (model, site) the
        answers' probabilities of being right."""
        pipe = self._r.pipeline(transaction=False)
        for model, parts in images.items():
            key = self._key(model)
            entries = [(image, version, site) for x, version, site in parts
                       for image in np.ascontiguousarray(x, dtype=DTYPE)]
            for image, version, site in entries[-self.cfg.cap:]:  # older ones would be trimmed at once
                fields = {"x": image.tobytes(), "shape": ",".join(map(str, image.shape)),
                          "version": "" if version is None else str(version), "site": check_name(site) if site else ""}
                pipe.xadd(key, fields, maxlen=self.cfg.cap, approximate=True)
        for (model, site), values in confidences.items():
            key = self._key(model, "confidence", check_name(site))
            pipe.rpush(key, *(f"{float(c):.6f}" for c in values[-self.cfg.cap:]))
            pipe.ltrim(key, -self.cfg.cap, -1)
            pipe.sadd(self._key(model, "sites"), site)
        pipe.execute()

    @translated
    def estimates(self, model: str) -> dict[str, tuple[float, int]]:
        """Per site: the mean probability that its recent answers are right (estimated accuracy), and how many."""
        sites = self.sites(model)
        pipe = self._r.pipeline(transaction=False)
        for site in sites:
            pipe.lrange(self._key(model, "confidence", site), 0, -1)
        out = {}
        for site, raw in zip(sites, pipe.execute(), strict=True):
            values = np.array([float(v) for v in raw])
            if len(values):
                out[site] = (float(values.mean()), len(values))
        return out

    @translated
    def recent(self, model: str, n: int, site: str | None = None) -> np.ndarray:
        """The last n recorded images (of those answered at `site`, when given: among the newest `cap`), oldest
        first, as float32 [k, C, H, W] (k <= n; other shapes dropped)."""
        if site is None:
            return _images(self._r.xrevrange(self._key(model), count=n))
        return self.recent_by_site(model, n).get(check_name(site), _images([]))

    @translated
    def recent_by_site(self, model: str, n: int) -> dict[str, np.ndarray]:
        """Per answering site, its last n images among the newest `cap` (one read for every site)."""
        grouped: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        for entry in self._r.xrevrange(self._key(model), count=self.cfg.cap):
            site = entry[1].get(b"site", b"").decode()
            if site and len(grouped.setdefault(site, [])) < n:
                grouped[site].append(entry)
        return {site: _images(entries) for site, entries in grouped.items()}

    @translated
    def sites(self, model: str) -> list[str]:
        """The sites whose answers have been recorded for the model."""
        return sorted(s.decode() for s in self._r.smembers(self._key(model, "sites")))

    @translated
    def set_checked(self, model: str, site: str, figures: CheckedEstimate) -> None:
        self._r.hset(self._key(model, "checked"), check_name(site), figures.model_dump_json())

    @translated
    def checked(self, model: str) -> dict[str, CheckedEstimate]:
        """Per site, the watch's latest checked estimate."""
        raw = self._r.hgetall(self._key(model, "checked"))
        return {k.decode(): CheckedEstimate.model_validate_json(v) for k, v in raw.items()}

    @translated
    def count(self, model: str) -> int:
        """Entries currently kept for the model."""
        return int(self._r.xlen(self._key(model)))

    @staticmethod
    def window_id(x: np.ndarray) -> str:
        """A content digest of a window of inputs (sha256 hex): the batch id its drift report carries."""
        return hashlib.sha256(np.ascontiguousarray(x, dtype=DTYPE).tobytes()).hexdigest()

    @translated
    def seen(self, model: str, window: str) -> bool:
        """Mark a window as checked; True if it was the last one checked already (nothing new arrived)."""
        previous = self._r.set(self._key(model, "seen"), window, get=True)
        return previous is not None and previous.decode() == window


def _images(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> np.ndarray:
    """Stream entries (newest first) as float32 [k, C, H, W], oldest first; after a model's input spec changes,
    older entries no longer fit, so only those shaped like the newest are kept."""
    if not entries:
        return np.zeros((0, 0, 0, 0), dtype=DTYPE)
    shape = _shape(entries[0][1])
    images = [np.frombuffer(f[b"x"], dtype=DTYPE).reshape(shape) for _, f in reversed(entries)
              if _shape(f) == shape and len(f[b"x"]) == DTYPE.itemsize * int(np.prod(shape))]
    return np.stack(images) if images else np.zeros((0, *shape), dtype=DTYPE)


def _shape(fields: dict[bytes, bytes]) -> tuple[int, ...]:
    """An entry's image shape, from its "C,H,W" field."""
    return tuple(int(s) for s in fields[b"shape"].decode().split(","))
