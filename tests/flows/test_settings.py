"""The one settings object: environment, flags on top, typed component configs, loud errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows.settings import Settings, SettingsError
from stackrec.loop import LoopConfig
from streaming.consumer import ConsumerConfig
from streaming.kafka_config import KafkaConfig
from streaming.redis_store import RedisConfig


@pytest.fixture
def env(monkeypatch):
    """No STACKREC_* variables from the machine; returns a setter for the test's own."""
    for key in [k for k in os.environ if k.startswith("STACKREC_")]:
        monkeypatch.delenv(key)

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"STACKREC_{name.upper()}", value)

    return set_env


def test_defaults_point_at_the_local_stack(env):
    s = Settings.load()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.topic, s.model, s.group_id, s.partitions) == (
        "interactions",
        "default",
        "stackrec",
        4,
    )
    assert s.home == Path(".stackrec")
    assert s.log_dir == Path(".stackrec/log/interactions")
    assert s.models_dir == Path(".stackrec/models/default")
    assert s.run_dir == Path(".stackrec/run")


def test_environment_is_read_and_typed(env):
    env(topic="clicks", partitions="8", batch_max_wait_s="2.5", home="/srv/rec", model="m1")
    s = Settings.load()
    assert (s.topic, s.partitions, s.batch_max_wait_s) == ("clicks", 8, 2.5)
    assert s.log_dir == Path("/srv/rec/log/clicks")
    assert s.models_dir == Path("/srv/rec/models/m1")


def test_overrides_beat_the_environment_and_none_means_not_given(env):
    env(topic="from-env", model="env-model", train_steps="5")
    s = Settings.load(topic="from-flag", model=None, train_steps=0)
    assert s.topic == "from-flag"
    assert s.model == "env-model"
    assert s.train_steps == 0  # a falsy flag value is still given


def test_redis_prefix_defaults_to_the_model_name(env):
    env(model="movies", redis_url="rediss://cache:6380/2", redis_password="pw", version_ttl_s="60")
    assert Settings.load().redis() == RedisConfig(
        url="rediss://cache:6380/2", password="pw", prefix="stackrec:movies", version_ttl_s=60
    )
    env(redis_prefix="shop:recs")
    assert Settings.load().redis().prefix == "shop:recs"


def test_component_configs_carry_the_settings(env):
    env(
        kafka_bootstrap="k1:9093,k2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="secret",
        kafka_ssl_cafile="/etc/ca.pem",
        topic="t",
        group_id="g",
        batch_max_events="100",
        batch_max_wait_s="7",
    )
    s = Settings.load()
    assert s.kafka() == KafkaConfig(
        bootstrap="k1:9093,k2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="secret",
        ssl_cafile="/etc/ca.pem",
    )
    assert s.kafka().client_options()["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert s.consumer() == ConsumerConfig(topic="t", group_id="g", max_events=100, max_wait_s=7.0)


def test_the_cycle_config_carries_the_training_settings(env):
    from flows.cycle import cycle_config

    env(anneal_share="0.35", replay_ratio="5", holdout_share="0.05", train_epochs="0")
    env(anneal_fresh_share="0.5")
    cycle = cycle_config(Settings.load())
    assert (cycle.anneal_share, cycle.replay_ratio, cycle.holdout_share) == (0.35, 5.0, 0.05)
    assert cycle.anneal_fresh_share == 0.5
    assert cycle.train_epochs is None  # 0: exactly train_steps
    env(cold_start_epochs="5", scratch_lr="0.004")
    cycle = cycle_config(Settings.load())
    assert (cycle.cold_start_epochs, cycle.scratch_lr) == (5.0, 0.004)
    assert cycle.scratch_train_config().lr == 0.004  # bootstrap and transfer train with it


def test_the_learning_defaults_are_the_loops_measured_ones(env):
    from flows.cycle import loop_config

    assert loop_config(Settings.load()) == LoopConfig()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("partitions", "four", "STACKREC_PARTITIONS: Input should be a valid integer"),
        ("partitions", "0", "STACKREC_PARTITIONS: Input should be greater than or equal to 1"),
        ("topic", "no spaces", "STACKREC_TOPIC: String should match pattern"),
        ("model", "a/b", "STACKREC_MODEL: String should match pattern"),
        ("batch_max_wait_s", "0", "STACKREC_BATCH_MAX_WAIT_S: Input should be greater than 0"),
        ("metrics_port", "70000", "STACKREC_METRICS_PORT: Input should be less than or equal"),
        ("anneal_share", "-1", "STACKREC_ANNEAL_SHARE: Input should be greater than or equal to 0"),
        ("anneal_fresh_share", "2", "STACKREC_ANNEAL_FRESH_SHARE: Input should be less than or"),
        ("cold_start_epochs", "0", "STACKREC_COLD_START_EPOCHS: Input should be greater than 0"),
    ],
)
def test_bad_environment_value_names_the_variable(env, name, value, message):
    env(**{name: value})
    with pytest.raises(SettingsError) as caught:
        Settings.load()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_bad_override_names_the_setting(env):
    with pytest.raises(
        SettingsError, match=r"^STACKREC_DIM: Input should be greater than or equal to 4"
    ):
        Settings.load(dim=2)


def test_unknown_override_is_refused(env):
    with pytest.raises(SettingsError, match=r"^STACKREC_BOGUS: Extra inputs are not permitted"):
        Settings.load(bogus=1)


def test_unknown_environment_variable_is_refused_by_name(env):
    env(topik="typo", zzz="x")
    with pytest.raises(SettingsError, match=r"^unknown setting STACKREC_TOPIK \(known: "):
        Settings.load()


def test_settings_are_frozen(env):
    s = Settings.load()
    with pytest.raises(ValueError, match="frozen"):
        s.topic = "other"


def test_passwords_do_not_appear_in_reprs_but_reach_the_clients(env):
    env(kafka_sasl_password="hunter2-kafka", redis_password="hunter2-redis")
    s = Settings.load()
    shown = " ".join([repr(s), str(s), repr(s.kafka()), repr(s.redis())])
    assert "hunter2" not in shown
    assert s.kafka().client_options()["sasl_plain_password"] == "hunter2-kafka"
    assert s.redis().password == "hunter2-redis"


def test_flow_parameters_leave_secrets_in_the_environment(env):
    """Prefect records flow parameters; a password there would sit in its database."""
    from flows.cli import _flow_overrides

    env(kafka_sasl_password="hunter2-kafka", redis_password="hunter2-redis", topic="t")
    overrides = _flow_overrides(Settings.load())
    assert overrides == {"topic": "t"}


def test_the_kafka_client_and_duplicates_policy_reach_the_consumer(env):
    env(kafka_client="confluent", duplicates="dead-letter")
    consumer = Settings.load().consumer()
    assert (consumer.client, consumer.duplicates) == ("confluent", "dead-letter")
    assert Settings.load(duplicates="drop").consumer().duplicates == "drop"


def test_an_unknown_kafka_client_names_the_variable(env):
    env(kafka_client="librdkafka")
    with pytest.raises(SettingsError, match=r"^STACKREC_KAFKA_CLIENT: String should match"):
        Settings.load()


def test_imprinting_can_be_switched_off(env):
    from flows.cycle import cycle_config

    env(imprint_new_items="false")
    assert cycle_config(Settings.load()).imprint is False
    assert cycle_config(Settings.load(imprint_new_items=True)).imprint is True


def test_the_cycle_loss_is_a_setting(env):
    from flows.cycle import cycle_config

    assert (cycle_config(Settings.load()).loss, Settings.load().sampled_above) == ("auto", 20_000)
    env(loss="sampled", sampled_above="5000", negatives="512")
    config = cycle_config(Settings.load())
    assert (config.loss, config.sampled_above, config.n_negatives) == ("sampled", 5000, 512)
    env(loss="softmax")
    with pytest.raises(SettingsError, match=r"^STACKREC_LOSS: String should match"):
        Settings.load()
