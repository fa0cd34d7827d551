"""Settings: defaults, CPIMON_* variables, overrides, and the errors an operator sees."""

from __future__ import annotations

import dataclasses
import ssl
from types import SimpleNamespace

import pytest

from models.errors import ConfigError
from streams.app import create_app
from streams.settings import ENV_PREFIX, Settings
from streams.transport import BatchConsumerThread


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.broker == "kafka://127.0.0.1:9092"
    assert settings.bootstrap_servers == ["127.0.0.1:9092"]
    assert settings.events_topic == "journey-events"
    assert settings.observation_partitions == 4
    assert settings.idle_timeout == 120.0
    assert settings.auto_offset_reset == "latest"
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.kafka_client_options() == {"security_protocol": "PLAINTEXT"}


def test_every_field_has_a_variable() -> None:
    # A value for every field, of the field's type, read back from CPIMON_<FIELD>.
    env = {}
    expected = {}
    for field in dataclasses.fields(Settings):
        default = getattr(Settings(), field.name)
        if field.name in (
            "broker",
            "auto_offset_reset",
            "security_protocol",
            "sasl_mechanism",
            "session_timeout",
        ):
            continue  # validated: covered below
        if isinstance(default, int):
            value: object = default + 7
        elif isinstance(default, float):
            value = default + 0.25
        else:
            value = f"custom-{field.name}"
        env[env_name(field.name)] = str(value)
        expected[field.name] = value
    settings = Settings.from_env(env)
    for name, value in expected.items():
        assert getattr(settings, name) == value, name
        assert type(getattr(settings, name)) is type(value), name


@pytest.mark.parametrize(
    ("variable", "raw", "field", "value"),
    [
        ("CPIMON_OBSERVATION_PARTITIONS", "12", "observation_partitions", 12),
        ("CPIMON_METRICS_PORT", " 9100 ", "metrics_port", 9100),
        ("CPIMON_MAX_EVENT_BYTES", "1_000_000", "max_event_bytes", 1_000_000),
        ("CPIMON_IDLE_TIMEOUT", "150.5", "idle_timeout", 150.5),
        ("CPIMON_MAX_FUTURE_SECONDS", "60", "max_future_seconds", 60.0),
        ("CPIMON_EVENTS_TOPIC", "shop.events", "events_topic", "shop.events"),
        (
            "CPIMON_BROKER",
            "kafka://k1:9092,kafka://k2:9093",
            "broker",
            "kafka://k1:9092,kafka://k2:9093",
        ),
        ("CPIMON_AUTO_OFFSET_RESET", "earliest", "auto_offset_reset", "earliest"),
        ("CPIMON_LOG_LEVEL", "debug", "log_level", "debug"),
    ],
)
def test_environment_overrides_defaults(variable: str, raw: str, field: str, value: object) -> None:
    settings = Settings.from_env({variable: raw})
    assert getattr(settings, field) == value
    assert type(getattr(settings, field)) is type(value)
    others = {f.name for f in dataclasses.fields(Settings)} - {field}
    assert all(getattr(settings, name) == getattr(Settings(), name) for name in others)


def test_empty_variables_are_ignored() -> None:
    assert Settings.from_env({"CPIMON_METRICS_PORT": "", "CPIMON_BROKER": ""}) == Settings()


def test_other_variables_are_ignored() -> None:
    env = {"METRICS_PORT": "1", "CPIMON_NO_SUCH_SETTING": "x", "cpimon_metrics_port": "2"}
    assert Settings.from_env(env) == Settings()


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPIMON_KPI_TOPIC", "from-the-environment")
    assert Settings.from_env().kpi_topic == "from-the-environment"
    assert Settings.from_env({}).kpi_topic == "kpi-values"


def test_explicit_overrides_beat_the_environment() -> None:
    env = {"CPIMON_METRICS_PORT": "9100", "CPIMON_BROKER": "kafka://env:9092"}
    settings = Settings.from_env(env, metrics_port=9200, broker="kafka://cli:9092")
    assert settings.metrics_port == 9200
    assert settings.bootstrap_servers == ["cli:9092"]
    # An override for something the environment does not set applies too.
    assert Settings.from_env(env, app_id="other").app_id == "other"


def test_none_overrides_are_ignored() -> None:
    env = {"CPIMON_METRICS_PORT": "9100", "CPIMON_AUTO_OFFSET_RESET": "earliest"}
    settings = Settings.from_env(env, metrics_port=None, auto_offset_reset=None, broker=None)
    assert settings.metrics_port == 9100
    assert settings.auto_offset_reset == "earliest"
    assert settings.broker == Settings().broker


def test_unknown_overrides_are_refused() -> None:
    with pytest.raises(ConfigError, match="metrics_prot"):
        Settings.from_env({}, metrics_prot=1)


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("metrics_port", "abc"),
        ("metrics_port", "90.5"),
        ("observation_partitions", "four"),
        ("max_event_bytes", "64k"),
        ("idle_timeout", "30s"),
        ("max_future_seconds", "five minutes"),
        ("idle_timeout", "nan"),
        ("commit_interval", "NaN"),
        ("max_future_seconds", "inf"),
        ("session_timeout", "-inf"),
    ],
)
def test_a_bad_number_names_its_variable(field: str, raw: str) -> None:
    variable = env_name(field)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: raw})
    assert variable in str(caught.value)
    assert raw in str(caught.value)


@pytest.mark.parametrize(
    "broker",
    [
        "localhost:9092",
        "http://k1:9092",
        "kafka://k1:9092,k2:9092",
        "KAFKA://k1:9092",
        ",",
        " , ",
    ],
)
def test_a_bad_broker_says_what_to_set(broker: str) -> None:
    with pytest.raises(ConfigError, match="CPIMON_BROKER") as caught:
        Settings.from_env({"CPIMON_BROKER": broker})
    assert "kafka://" in str(caught.value)
    with pytest.raises(ConfigError, match="--broker"):
        Settings.from_env({}, broker=broker)


def test_no_broker_at_all_is_refused() -> None:
    with pytest.raises(ConfigError, match="CPIMON_BROKER"):
        Settings.from_env({}, broker="")


def test_several_brokers() -> None:
    settings = Settings.from_env({"CPIMON_BROKER": " kafka://k1:9092 , kafka://k2:9093,"})
    assert settings.broker_urls == ["kafka://k1:9092", "kafka://k2:9093"]
    assert settings.bootstrap_servers == ["k1:9092", "k2:9093"]


@pytest.mark.parametrize("reset", ["beginning", "EARLIEST", "none", "smallest"])
def test_a_bad_offset_reset_says_what_to_set(reset: str) -> None:
    with pytest.raises(ConfigError, match="CPIMON_AUTO_OFFSET_RESET") as caught:
        Settings.from_env({"CPIMON_AUTO_OFFSET_RESET": reset})
    assert "earliest" in str(caught.value) and "latest" in str(caught.value)


@pytest.mark.parametrize("protocol", ["TLS", "plaintext", "SASL", "SASL_PLAIN"])
def test_a_bad_security_protocol_says_what_to_set(protocol: str) -> None:
    with pytest.raises(ConfigError, match="CPIMON_SECURITY_PROTOCOL") as caught:
        Settings.from_env({"CPIMON_SECURITY_PROTOCOL": protocol})
    assert "SASL_SSL" in str(caught.value)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_a_username_says_what_to_set(protocol: str) -> None:
    with pytest.raises(ConfigError, match="CPIMON_SASL_USERNAME"):
        Settings.from_env({"CPIMON_SECURITY_PROTOCOL": protocol, "CPIMON_SASL_PASSWORD": "pw"})


@pytest.mark.parametrize("field", ["observation_partitions", "topic_partitions"])
@pytest.mark.parametrize("count", ["0", "-1"])
def test_partition_counts_must_be_positive(field: str, count: str) -> None:
    with pytest.raises(ConfigError, match="partition"):
        Settings.from_env({env_name(field): count})


def test_sasl_plaintext_client_options() -> None:
    env = {
        "CPIMON_BROKER": "kafka://secure-1:9094,kafka://secure-2:9094",
        "CPIMON_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CPIMON_SASL_MECHANISM": "SCRAM-SHA-512",
        "CPIMON_SASL_USERNAME": "cpimon",
        "CPIMON_SASL_PASSWORD": "s3cret",
    }
    settings = Settings.from_env(env)
    assert settings.bootstrap_servers == ["secure-1:9094", "secure-2:9094"]
    assert settings.ssl_context() is None
    assert settings.kafka_client_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "cpimon",
        "sasl_plain_password": "s3cret",
    }


def test_sasl_mechanism_defaults_to_plain() -> None:
    settings = Settings.from_env(
        {"CPIMON_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CPIMON_SASL_USERNAME": "u"}
    )
    options = settings.kafka_client_options()
    assert options["sasl_mechanism"] == "PLAIN"
    assert options["sasl_plain_password"] == ""


def test_ssl_client_options_carry_a_context() -> None:
    settings = Settings.from_env({"CPIMON_SECURITY_PROTOCOL": "SSL"})
    options = settings.kafka_client_options()
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    sasl_ssl = Settings.from_env(
        {"CPIMON_SECURITY_PROTOCOL": "SASL_SSL", "CPIMON_SASL_USERNAME": "u"}
    ).kafka_client_options()
    assert isinstance(sasl_ssl.pop("ssl_context"), ssl.SSLContext)
    assert sasl_ssl == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "",
    }


def test_replace_keeps_the_rest() -> None:
    settings = Settings.from_env({"CPIMON_APP_ID": "shop"})
    changed = settings.replace(metrics_port=1234)
    assert changed.metrics_port == 1234 and changed.app_id == "shop"
    assert settings.metrics_port == Settings().metrics_port
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.metrics_port = 1  # type: ignore[misc]


def test_idle_timeout_shorter_than_a_failover_is_refused() -> None:
    with pytest.raises(ConfigError, match="CPIMON_IDLE_TIMEOUT") as raised:
        Settings.from_env({"CPIMON_SESSION_TIMEOUT": "30", "CPIMON_IDLE_TIMEOUT": "80"})
    assert "Raise CPIMON_IDLE_TIMEOUT" in str(raised.value)
    assert Settings.from_env({"CPIMON_SESSION_TIMEOUT": "2", "CPIMON_IDLE_TIMEOUT": "6"})


def test_fetch_max_wait_defaults_to_a_tenth_of_a_second_and_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).fetch_max_wait == 0.1
    assert Settings.from_env({"CPIMON_FETCH_MAX_WAIT": "0.02"}).fetch_max_wait == 0.02


@pytest.mark.parametrize("raw", ["0", "-0.1", "31"])
def test_fetch_max_wait_out_of_range_says_what_to_set(raw: str) -> None:
    with pytest.raises(ConfigError, match="CPIMON_FETCH_MAX_WAIT"):
        Settings.from_env({"CPIMON_FETCH_MAX_WAIT": raw})


def test_the_app_carries_fetch_max_wait_to_the_consumer_thread() -> None:
    app, _topics = create_app(Settings(app_id="fetch-wait-test", fetch_max_wait=0.05))
    assert app.fetch_max_wait == 0.05
    # The thread reads its app's setting when it creates the aiokafka consumer.
    thread = SimpleNamespace(app=app)
    assert BatchConsumerThread.fetch_max_wait_ms.fget(thread) == 50  # type: ignore[attr-defined]
