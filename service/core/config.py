"""Settings for the API, the workers and the local stack: one object, env prefix UNKD_.

A leaf module: imports nothing from the project, so worker and service both use it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNKD_", env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        None, description="redis://… or rediss://…; unset: `unkd up` starts a local Redis itself"
    )
    data_dir: Path = Field(Path("data"), description="datasets, models, serving bundles, local Redis")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated; when set, mutating endpoints need one"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="worker training device; auto: CUDA when torch sees a GPU"
    )
    index_factory: str = Field("Flat", description="FAISS factory string: Flat, IVF1024,Flat, HNSW32")
    nprobe: int = Field(16, ge=1, le=65536, description="IVF lists searched per query")
    hnsw_ef_search: int = Field(128, ge=1, le=65536, description="HNSW search breadth")
    max_k: int = Field(200, ge=1, le=10_000, description="largest k a recommendations request may ask")
    max_batch_users: int = Field(1000, ge=1, le=100_000, description="users per batch request")
    upload_max_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="dataset upload limit, enforced while streaming"
    )
    job_soft_time_limit_s: int = Field(
        6 * 3600, ge=10, description="a job still training after this fails at its next epoch"
    )
    train_queue: str = Field("train", min_length=1, description="Celery queue of training jobs")
    light_queue: str = Field("light", min_length=1, description="Celery queue of publish jobs")
    reload_poll_s: float = Field(2.0, gt=0, description="API: how often to re-check the active model")
    job_max_retries: int = Field(
        3, ge=0, le=100, description="retries of a job after a transient error (Redis, disk)"
    )
    result_expires_s: int = Field(7 * 24 * 3600, ge=60, description="Celery result TTL")
    job_heartbeat_s: float = Field(
        10.0, gt=0, le=600,
        description="a running job refreshes its heartbeat this often; any worker requeues a "
        "running job whose heartbeat is 3 intervals old (its worker died)",
    )  # fmt: skip
    max_job_memory_mb: int = Field(
        16 * 1024, ge=1,
        description="a job estimated to need more (embeddings, optimiser state, teacher "
        "candidates) is refused at submission (422) and failed by the worker",
    )  # fmt: skip
    redis_timeout_s: float = Field(
        5.0, gt=0, le=300,
        description="registry socket timeout: a hung Redis answers 503 after this, never hangs a request",
    )  # fmt: skip
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024,
        description="largest JSON request body (uploads have upload_max_bytes); larger: 413",
    )  # fmt: skip
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="API and worker log level"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if not url:
            return None  # UNKD_REDIS_URL= (empty) means unset
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError(f"redis_url={url!r}: expected a redis:// or rediss:// URL")
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, keys: list[str]) -> list[str]:
        for k in keys:
            if len(k) < 8:
                raise ValueError("each API key needs at least 8 characters")
        return keys

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
