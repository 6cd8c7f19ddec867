"""Settings for the API, the workers and the local stack: one object, env prefix UNKD_.

A leaf module: imports nothing from the project, so worker and service both use it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Role = Literal["read", "write", "admin"]
EventType = Literal["view", "click", "cart", "purchase"]
EVENT_TYPES: tuple[EventType, ...] = ("view", "click", "cart", "purchase")
DEFAULT_POSITIVE: tuple[EventType, ...] = ("click", "purchase")
ROLES: tuple[Role, ...] = ("read", "write", "admin")  # each allows what the ones before it do
_KEY_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class ApiKey:
    """One configured key: who holds it (`name`, what logs and the publish history show),
    what it may do (`role`), and the secret itself, kept out of repr."""

    name: str
    role: Role
    key: str = field(repr=False)


def parse_key_entry(entry: str, position: int, where: str) -> ApiKey:
    """`name:role:key`, or a plain `key` (an admin named `key<position>`, the pre-role form).

    Raises ValueError naming `where` (UNKD_API_KEYS or the keys file and line) and the
    reason, never the key.
    """
    parts = entry.split(":")
    if len(parts) == 1:
        name, role, key = f"key{position}", "admin", entry
    elif len(parts) == 3:
        name, role, key = (p.strip() for p in parts)
        if not _KEY_NAME.match(name):
            raise ValueError(f"{where}: key name {name!r} must match {_KEY_NAME.pattern}")
        if role not in ROLES:
            raise ValueError(
                f"{where}: key {name!r} has role {role!r}; expected one of {', '.join(ROLES)}"
            )
    else:
        raise ValueError(
            f"{where}: expected 'name:role:key' or a plain key, got {len(parts) - 1} ':'"
        )
    if len(key) < 8:
        raise ValueError(f"{where}: each API key needs at least 8 characters")
    return ApiKey(name, role, key)  # type: ignore[arg-type]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; a name or an empty host is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    # hide_input_in_errors: a refused UNKD_API_KEYS must not print the keys it holds
    model_config = SettingsConfigDict(
        env_prefix="UNKD_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    redis_url: str | None = Field(
        None, description="redis://… or rediss://…; unset: `unkd up` starts a local Redis itself"
    )
    data_dir: Path = Field(
        Path("data"), description="datasets, models, serving bundles, local Redis"
    )
    artifact_url: str = Field(
        "",
        description="where datasets, models and serving bundles are stored: empty = the data dir (one host), or an "
        "fsspec URL shared by every host, e.g. s3://bucket/prefix (AWS_* variables give the "
        "endpoint and credentials); service/core/artifacts.py",
    )
    artifact_cache_max_mb: float = Field(
        20_480,
        ge=0,
        description="with artifact_url set: the most this host's cache of fetched "
        "artifacts (<data_dir>/cache/artifacts) keeps, least recently used removed first; 0 = no limit",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated 'name:role:key' (role read|write|admin) or plain keys "
        "(admins); when set, mutating endpoints need one",
    )
    api_keys_file: Path | None = Field(
        None, description="a file of keys, one 'name:role:key' (or plain key) per line, # comments"
    )
    allow_open: bool = Field(
        False, description="let `unkd api` / `unkd up` listen beyond loopback without API keys"
    )
    publish_gate: bool = Field(True, description="check the publish gate before a model is served")
    gate_max_head_share_ratio: float = Field(
        1.0,
        gt=0,
        le=100,
        description="gate: a student's head_share@20 at most this x its teacher's",
    )
    gate_min_ndcg_ratio: float = Field(
        0.9,
        ge=0,
        le=100,
        description="gate: a model's ndcg@20 at least this x the served model's (same dataset)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="worker training device; auto: CUDA when torch sees a GPU"
    )
    index_factory: str = Field(
        "Flat", description="FAISS factory string: Flat, IVF1024,Flat, HNSW32"
    )
    nprobe: int = Field(16, ge=1, le=65536, description="IVF lists searched per query")
    hnsw_ef_search: int = Field(128, ge=1, le=65536, description="HNSW search breadth")
    max_k: int = Field(
        200, ge=1, le=10_000, description="largest k a recommendations request may ask"
    )
    max_batch_users: int = Field(1000, ge=1, le=100_000, description="users per batch request")
    upload_max_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="dataset upload limit, enforced while streaming"
    )
    job_soft_time_limit_s: int = Field(
        6 * 3600, ge=10, description="a job still training after this fails at its next epoch"
    )
    train_queue: str = Field("train", min_length=1, description="Celery queue of training jobs")
    light_queue: str = Field("light", min_length=1, description="Celery queue of publish jobs")
    reload_poll_s: float = Field(
        2.0, gt=0, description="API: how often to re-check the active model"
    )
    serving_mmap: bool = Field(
        False,
        description="API: map a bundle's vectors and arrays from its files, shared by the "
        "API processes of one host, instead of a copy per process (docs/service.md)",
    )
    serving_gc_freeze: bool = Field(
        True,
        description="API: after each bundle load, move what is alive out of the garbage "
        "collector's walks (gc.freeze; service/serving/gc_policy.py): the walks set p99 latency",
    )
    job_max_retries: int = Field(
        3, ge=0, le=100, description="retries of a job after a transient error (Redis, disk)"
    )
    result_expires_s: int = Field(7 * 24 * 3600, ge=60, description="Celery result TTL")
    job_heartbeat_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="a running job refreshes its heartbeat this often; any worker requeues a "
        "running job whose heartbeat is 3 intervals old (its worker died)",
    )
    pipeline_tick_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="`unkd scheduler` sends the pipelines' tick this often: it starts the runs "
        "that are due (schedule, every_s or min_new_events) and fails the runs whose worker died",
    )
    fanout_min_users: int = Field(
        200_000,
        ge=1,
        description="a distillation job over at least this many users ranks its teacher's "
        "candidate lists in shards that every worker takes, kept on disk (worker/fanout.py)",
    )
    fanout_shard_users: int = Field(
        50_000, ge=1, description="users per candidate shard of a fanned-out distillation job"
    )
    fanout_chunk_users: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="users a shard scores at once: memory ~ 2 x this x items floats on the "
        "teacher's device; the job's cancel flag is checked between chunks",
    )
    max_job_memory_mb: int = Field(
        16 * 1024,
        ge=1,
        description="a job estimated to need more (embeddings, optimiser state, teacher "
        "candidates) is refused at submission (422) and failed by the worker",
    )
    redis_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="registry socket timeout: a hung Redis answers 503 after this, never hangs a request",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="largest JSON request body (uploads have upload_max_bytes); larger: 413",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="API and worker log level"
    )
    exposure_counting: bool = Field(
        True,
        description="API: count live exposure (slots per popularity group, items, latency) "
        "of every answered recommendation and flush it to Redis (GET /v1/serving/exposure)",
    )
    exposure_flush_s: float = Field(
        1.0, gt=0, le=60, description="API: how often the live exposure counts are flushed to Redis"
    )

    # -- events (POST /v1/events) and the fresh-seen filter (service/serving/fresh.py) --------
    events_positive_types: Annotated[list[EventType], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_POSITIVE),
        description="event types that count as positive feedback: their items leave the user's "
        "next answers and feed a history answer for a user the model does not know "
        "(comma-separated); the others are stored only",
    )
    events_dedup_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="how long an event_id is remembered: a repeat within it is stored once",
    )
    events_stream_maxlen: int = Field(
        5_000_000,
        ge=0,
        description="the event stream keeps about this many newest entries (XADD MAXLEN ~); "
        "0 keeps every entry",
    )
    fresh_max_users: int = Field(
        50_000,
        ge=1,
        description="API: users whose recent positive items each process holds (least recently "
        "active dropped first)",
    )
    fresh_items_per_user: int = Field(
        32, ge=1, le=1024, description="API: most recent positive items held per user"
    )
    fresh_ttl_s: float = Field(
        3 * 24 * 3600.0,
        gt=0,
        description="API: an event's item stays excluded (or in a history answer) this long "
        "after it was stored; the next retrain is expected to know it by then",
    )
    fresh_tail_entries: int = Field(
        200_000,
        ge=0,
        description="API: newest stream entries read at start (within fresh_ttl_s) to fill the "
        "recent-items map before following the stream",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if not url:
            return None  # UNKD_REDIS_URL= (empty) means unset
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError(f"redis_url={url!r}: expected a redis:// or rediss:// URL")
        return url

    @field_validator("artifact_url")
    @classmethod
    def _artifact_scheme(cls, url: str) -> str:
        url = url.strip()
        if url and not re.match(r"^[a-z][a-z0-9+.-]*://.+", url):
            raise ValueError(
                f"artifact_url={url!r}: expected an fsspec URL such as s3://bucket/prefix"
            )
        return url.rstrip("/")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("events_positive_types", mode="before")
    @classmethod
    def _split_types(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_well_formed(cls, entries: list[str]) -> list[str]:
        for i, entry in enumerate(entries, 1):
            parse_key_entry(entry, i, f"UNKD_API_KEYS entry {i}")
        return entries

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_file_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    _keys: list[ApiKey] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _load_keys(self) -> Settings:
        keys = [
            parse_key_entry(e, i, f"UNKD_API_KEYS entry {i}")
            for i, e in enumerate(self.api_keys, 1)
        ]
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"UNKD_API_KEYS_FILE={str(self.api_keys_file)!r}: cannot read it "
                    f"({type(exc).__name__})"
                ) from None
            for n, line in enumerate(lines, 1):
                entry = line.strip()
                if entry and not entry.startswith("#"):
                    where = f"UNKD_API_KEYS_FILE line {n}"
                    keys.append(parse_key_entry(entry, len(keys) + 1, where))
        names = [k.name for k in keys]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"api_keys: key name {name!r} is used twice")
        if len({k.key for k in keys}) != len(keys):
            raise ValueError("api_keys: the same key is configured twice")
        self._keys = keys
        return self

    @property
    def keys(self) -> list[ApiKey]:
        """Every configured key (UNKD_API_KEYS, then UNKD_API_KEYS_FILE); empty: no auth."""
        return list(self._keys)

    def exposure_error(self, host: str) -> str | None:
        """Why listening on `host` is refused (beyond loopback without keys), or None."""
        if self._keys or self.allow_open or is_loopback(host):
            return None
        return (
            f"refusing to listen on {host or 'every interface'} without API keys: set "
            "UNKD_API_KEYS (or UNKD_API_KEYS_FILE), or UNKD_ALLOW_OPEN=1 to serve without keys"
        )

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def bundles_dir(self) -> Path:
        return self.data_dir / "bundles"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_env(settings: Settings) -> dict[str, str]:
    """The UNKD_* variables that rebuild `settings` in a child process (API, worker).

    Every field is written, so a child sees exactly these settings whatever its own
    environment or .env holds. None becomes an empty value (which Settings reads as unset).
    """
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            text = ""
        elif isinstance(value, list):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        env[f"UNKD_{name.upper()}"] = text
    return env
