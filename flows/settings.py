"""The one settings object: ``STACKREC_*`` environment variables, overridden by CLI flags.

Built once at the edge (CLI, flow parameters) and turned into the typed configs each component
takes (``kafka()``, ``redis()``, ...), so no library reads the environment itself. Unknown
``STACKREC_*`` variables are an error: a typo should not silently fall back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from stackrec.loop import LoopConfig
from stackrec.registry import Registry
from streaming.consumer import ConsumerConfig
from streaming.kafka_config import KafkaConfig
from streaming.redis_store import RedisConfig

_LOOP = LoopConfig()
_CYCLE = _LOOP.cycle


class SettingsError(ValueError):
    """A setting has a bad value; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STACKREC_", frozen=True, extra="forbid")

    home: Path = Field(Path(".stackrec"), description="run directory: log, models, pids, logs")
    # Kafka (production points bootstrap at a real cluster; security settings pass through)
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic: str = Field("interactions", pattern=r"^[A-Za-z0-9._-]{1,200}$")
    partitions: int = Field(4, ge=1, description="partitions when stackrec creates the topic")
    group_id: str = "stackrec"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_client: str = Field(
        "kafka-python", pattern=r"^(kafka-python|confluent)$", description="confluent: ~2x"
    )
    duplicates: str = Field(
        "keep", pattern=r"^(keep|drop|dead-letter)$", description="repeated (user, item, ts)"
    )
    # Redis (redis:// or rediss:// for TLS; a password in the URL or below)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    redis_prefix: str | None = Field(None, description="default: stackrec:<model>")
    version_ttl_s: int = Field(3600, ge=1, description="grace period of superseded versions")
    # the continual cycle
    model: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    batch_max_events: int = Field(50_000, ge=1)
    batch_max_wait_s: float = Field(5.0, gt=0)
    # The learning defaults are CycleConfig's and LoopConfig's, the best measured on real data.
    train_steps: int = Field(_CYCLE.train_steps, ge=0, description="most steps per cycle")
    train_epochs: float = Field(
        _CYCLE.train_epochs, ge=0, description="passes over a cycle's windows; 0: no cap"
    )
    cold_start_epochs: float = Field(
        _CYCLE.cold_start_epochs, gt=0, description="passes of the first cycle, from nothing"
    )
    batch_size: int = Field(128, ge=1)
    dim: int = Field(64, ge=4)
    blocks: int = Field(2, ge=1)
    max_len: int = Field(50, ge=2)
    lr: float = Field(_CYCLE.lr, gt=0, description="a cycle's fine-tuning rate (AdamW)")
    scratch_lr: float = Field(
        _CYCLE.scratch_lr, gt=0, description="bootstrap, transfer and cold-start rate"
    )
    loss: str = Field(
        "auto", pattern=r"^(auto|full|sampled)$", description="auto: CPU samples past sampled_above"
    )
    sampled_above: int = Field(20_000, ge=0, description="items beyond which auto samples")
    negatives: int = Field(2048, ge=1, description="sampled softmax: negatives per step")
    model_kind: str = Field("nextitnet", pattern=r"^(nextitnet|sasrec)$")
    imprint_new_items: bool = Field(True, description="new items start from their contexts")
    replay_ratio: float = Field(
        _CYCLE.replay_ratio, ge=0, description="replayed windows per new window"
    )
    holdout_share: float = Field(
        0.1, ge=0, lt=1, description="latest share of a batch for the gate"
    )
    anneal_share: float = Field(
        _CYCLE.anneal_share, ge=0, description="cool-down steps per fine-tuning step (0: off)"
    )
    anneal_fresh_share: float = Field(
        _CYCLE.anneal_fresh_share, ge=0, le=1, description="share of the cool-down from the batch"
    )
    gate_tolerance: float = Field(
        _LOOP.gate.tolerance, ge=0, le=1, description="relative NDCG@10 drop allowed"
    )
    growth_policy: str = Field(
        _LOOP.growth_policy,
        pattern=r"^(data_volume|fitted|none)$",
        description="when to stack (README)",
    )
    growth_factor: float = Field(
        _LOOP.growth_factor, gt=1, description="data_volume: stack when data grew this x"
    )
    max_depth: int = Field(_LOOP.max_depth, ge=1)
    stack_operator: str = Field(
        _LOOP.stack_operator, pattern=r"^(adjacent|cross|copy_top_k|embeddings_only)$"
    )
    stack_mode: str = Field(_LOOP.stack_mode, pattern=r"^(function_preserving|faithful)$")
    top_k: int = Field(50, ge=1, description="recommendations published per user")
    publish_users: int = Field(
        100_000, ge=1, description="top-K published for this many most recently active users"
    )
    seed: int = 0
    # metrics
    pushgateway: str | None = Field(None, description="host:port; push metrics after each run")
    metrics_host: str = Field("127.0.0.1", description="0.0.0.0 to be scraped from outside")
    metrics_port: int = Field(9464, ge=0, le=65535)
    prefect_port: int = Field(4200, ge=1, le=65535, description="local server of stackrec serve")
    prometheus_port: int = Field(9090, ge=1, le=65535, description="up --with-monitoring")

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Settings from the environment with non-None ``overrides`` (CLI flags) on top."""
        _reject_unknown_env(cls)
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "settings"
            raise SettingsError(f"STACKREC_{field.upper()}: {first['msg']}") from None

    # --- paths in the run directory --------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        return self.home / "log" / self.topic

    @property
    def models_dir(self) -> Path:
        return self.home / "models" / self.model

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    # --- component configs -----------------------------------------------------------------
    def kafka(self) -> KafkaConfig:
        return KafkaConfig(
            bootstrap=self.kafka_bootstrap,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=_reveal(self.kafka_sasl_password),
            ssl_cafile=self.kafka_ssl_cafile,
        )

    def consumer(self) -> ConsumerConfig:
        return ConsumerConfig(
            topic=self.topic,
            group_id=self.group_id,
            max_events=self.batch_max_events,
            max_wait_s=self.batch_max_wait_s,
            client=self.kafka_client,
            duplicates=self.duplicates,
        )

    def redis(self) -> RedisConfig:
        return RedisConfig(
            url=self.redis_url,
            password=_reveal(self.redis_password),
            prefix=self.redis_prefix or f"stackrec:{self.model}",
            version_ttl_s=self.version_ttl_s,
        )

    def registry(self) -> Registry:
        return Registry(self.models_dir)


SECRETS = frozenset({"kafka_sasl_password", "redis_password"})


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _reject_unknown_env(cls: type[Settings]) -> None:
    known = {f"STACKREC_{name.upper()}" for name in cls.model_fields}
    unknown = sorted(k for k in os.environ if k.startswith("STACKREC_") and k not in known)
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]} (known: {', '.join(sorted(known))})")
