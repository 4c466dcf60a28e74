"""Settings: parsed from the environment once, every bad value refused with the variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import SECRET_SETTINGS, SETTINGS, Backend, describe_settings, load_settings
from gateway.errors import ConfigError


def test_defaults_use_the_emulator() -> None:
    """With nothing configured the gateway listens on 8080 and embeds the emulator."""
    settings = load_settings({})
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.uses_emulator
    assert settings.audio_mode == "pcm16"
    assert settings.append_ms == 20


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
        ({"APPEND_MS": "30"}, "APPEND_MS"),
        ({"APPEND_MS": "120"}, "APPEND_MS"),
        ({"AUDIO_MODE": "opus"}, "AUDIO_MODE"),
        ({"GATEWAY_PUBLIC_URL": "gw.example.com"}, "GATEWAY_PUBLIC_URL"),
        ({"GATEWAY_PUBLIC_URL": "https://gw.example.com/?x=1"}, "GATEWAY_PUBLIC_URL"),
        ({"REALTIME_URL": "https://example.com/v1/realtime"}, "REALTIME_URL"),
        ({"REALTIME_PROTOCOL": "v2"}, "REALTIME_PROTOCOL"),
        ({"VAD_THRESHOLD": "1.5"}, "VAD_THRESHOLD"),
        ({"VAD_INTERRUPT_RESPONSE": "maybe"}, "VAD_INTERRUPT_RESPONSE"),
        ({"BARGE_IN": "always"}, "BARGE_IN"),
        ({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"}, "AZURE_OPENAI_DEPLOYMENT"),
        ({"AZURE_OPENAI_DEPLOYMENT": "rt"}, "AZURE_OPENAI_ENDPOINT"),
        (
            {"AZURE_OPENAI_ENDPOINT": "ftp://r.example", "AZURE_OPENAI_DEPLOYMENT": "rt"},
            "AZURE_OPENAI_ENDPOINT",
        ),
        (
            {"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_DEPLOYMENT": "a b"},
            "DEPLOYMENT",
        ),
        ({"REALTIME_AUTH": "key"}, "REALTIME_AUTH"),
        ({"REALTIME_AUTH": "cert"}, "REALTIME_AUTH"),
        ({"VAD_TYPE": "energy"}, "VAD_TYPE"),
        ({"VAD_EAGERNESS": "low"}, "VAD_EAGERNESS"),  # applies to semantic_vad only
        ({"NOISE_REDUCTION": "studio"}, "NOISE_REDUCTION"),
        ({"MAX_OUTPUT_TOKENS": "5000"}, "MAX_OUTPUT_TOKENS"),
        ({"MAX_OUTPUT_TOKENS": "0"}, "MAX_OUTPUT_TOKENS"),
        ({"TEMPERATURE": "2"}, "TEMPERATURE"),
        ({"TEMPERATURE": "0.8"}, "TEMPERATURE"),  # the embedded emulator speaks GA: no temperature
        ({"SIP_LISTEN": "sctp:0.0.0.0:5060"}, "SIP_LISTEN"),
        ({"SIP_LISTEN": "tls:0.0.0.0:5061"}, "SIP_TLS_CERT"),
        ({"SIP_LISTEN": "udp:0.0.0.0:5060", "SIP_TLS_CERT": "/etc/ssl/sip.pem"}, "SIP_TLS_CERT"),
        (
            {"SIP_LISTEN": "tls:0.0.0.0:5061", "SIP_TLS_CERT": "/nonexistent.pem", "SIP_TLS_KEY": "/k.pem"},
            "SIP_TLS_CERT",
        ),
    ],
)
def test_bad_setting_names_the_variable(env: dict[str, str], name: str) -> None:
    """A malformed or incomplete setting raises ConfigError whose message starts with the variable."""
    with pytest.raises(ConfigError, match=name):
        load_settings(env)


def test_secret_values_never_appear_in_errors_or_repr() -> None:
    """Settings' repr hides secrets, and a parse error on a secret shows <redacted>, not the value."""
    settings = load_settings({"OPENAI_API_KEY": "sk-very-secret", "TWILIO_AUTH_TOKEN": "tok-secret"})
    assert "sk-very-secret" not in repr(settings)
    assert "tok-secret" not in repr(settings)
    assert {
        "OPENAI_API_KEY",
        "AZURE_OPENAI_API_KEY",
        "REALTIME_API_KEY",
        "TWILIO_AUTH_TOKEN",
    } <= SECRET_SETTINGS


def test_configured_backend_turns_the_emulator_off() -> None:
    """Any of REALTIME_URL, an Azure endpoint or an OpenAI key means a real backend."""
    assert not load_settings({"OPENAI_API_KEY": "k"}).uses_emulator
    assert not load_settings({"REALTIME_URL": "ws://127.0.0.1:1/v1/realtime"}).uses_emulator
    azure = {"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_DEPLOYMENT": "rt"}
    assert not load_settings(azure).uses_emulator


def test_help_lists_every_variable() -> None:
    """`serve --help` text names every declared variable with its default."""
    text = describe_settings()
    for setting in SETTINGS:
        assert setting.env in text
    assert "[default: 8080]" in text


AZURE = {"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_DEPLOYMENT": "rt"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TWILIO_AUTH_TOKEN": "tok"}, "TWILIO_AUTH_TOKEN"),
        ({"GATEWAY_PUBLIC_URL": "https://gw.example.com"}, "GATEWAY_PUBLIC_URL"),
    ],
)
def test_production_settings_without_a_backend_refuse_to_start(env: dict[str, str], named: str) -> None:
    """A provider secret or a public URL with no backend is refused, saying what to set; no emulator."""
    with pytest.raises(ConfigError, match=named) as refused:
        load_settings(env)
    message = str(refused.value)
    assert "AZURE_OPENAI_ENDPOINT" in message
    assert "REALTIME_BACKEND=emulator" in message
    assert "tok" not in message


def test_emulator_on_request_or_on_a_private_gateway() -> None:
    """The emulator is used when asked for, or when nothing is configured and the URL is loopback."""
    assert load_settings({"REALTIME_BACKEND": "emulator", "TWILIO_AUTH_TOKEN": "t"}).uses_emulator
    assert load_settings({"GATEWAY_PUBLIC_URL": "http://127.0.0.1:8080"}).uses_emulator
    assert load_settings({"GATEWAY_PUBLIC_URL": "http://localhost:8080"}).uses_emulator


def test_conflicting_backends_are_reported() -> None:
    """An OpenAI key next to Azure settings is an error naming both, not a silent pick."""
    with pytest.raises(ConfigError, match="conflicting") as refused:
        load_settings({"OPENAI_API_KEY": "sk-secret-value", **AZURE})
    assert "OPENAI_API_KEY" in str(refused.value)
    assert "AZURE_OPENAI_ENDPOINT" in str(refused.value)
    assert "sk-secret-value" not in str(refused.value)
    with pytest.raises(ConfigError, match="conflicting"):
        load_settings({"REALTIME_URL": "ws://127.0.0.1:1/v1/realtime", "AZURE_OPENAI_API_KEY": "k"})


def test_realtime_backend_chooses_and_names_what_it_ignores() -> None:
    """REALTIME_BACKEND picks one of several configured backends; the others are listed as ignored."""
    settings = load_settings({"REALTIME_BACKEND": "openai", "OPENAI_API_KEY": "k", **AZURE})
    assert settings.backend() is Backend.OPENAI
    endpoint = settings.endpoint()
    assert endpoint is not None
    assert endpoint.url.startswith("wss://api.openai.com/")
    assert settings.backend_key() == "k"
    assert settings.ignored_settings() == ["AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT"]
    azure = load_settings({"REALTIME_BACKEND": "azure", "OPENAI_API_KEY": "k", **AZURE})
    assert azure.backend() is Backend.AZURE
    assert azure.backend_key() is None  # Entra ID, not the OpenAI key


def test_realtime_backend_needs_its_settings() -> None:
    """Choosing a backend whose settings are missing names what is missing."""
    with pytest.raises(ConfigError, match="REALTIME_BACKEND=azure needs AZURE_OPENAI_ENDPOINT"):
        load_settings({"REALTIME_BACKEND": "azure", "OPENAI_API_KEY": "k"})
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT must be set"):
        load_settings({"AZURE_OPENAI_API_KEY": "k"})


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"GATEWAY_PORT": "abc"}, "GATEWAY_PORT='abc' is invalid: must be an integer"),
        ({"APPEND_MS": "20ms"}, "must be an integer"),
        ({"MAX_CALL_S": "abc"}, "MAX_CALL_S='abc' is invalid: must be a number"),
        ({"MAX_CALL_S": "nan"}, "must be a finite number"),
    ],
)
def test_numbers_say_what_they_must_be(env: dict[str, str], says: str) -> None:
    """A non-numeric value for a numeric setting says "must be an integer" (or a number)."""
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    assert says in str(refused.value)
    assert "invalid literal" not in str(refused.value)


def test_help_lists_allowed_values_of_enumerated_settings() -> None:
    """`serve --help` lists the allowed values of every enumerated setting."""
    lines = {line.split()[0]: line for line in describe_settings().splitlines()[1:] if line.strip()}
    assert "(one of: server, local, both)" in lines["BARGE_IN"]
    assert "(one of: json, console)" in lines["LOG_FORMAT"]
    assert "(one of: auto, emulator, url, azure, openai)" in lines["REALTIME_BACKEND"]
    assert "(one of: ga, preview)" in lines["REALTIME_PROTOCOL"]
    assert "(one of:" in lines["CANCEL_POLICY"]
    assert "(one of:" in lines["AUDIO_MODE"]
    assert "(one of:" in lines["LOG_LEVEL"]


def test_reconnect_budget_help_says_only_drops_count() -> None:
    """UPSTREAM_MAX_RECONNECTS counts drops only (planned renewals are free), in help and README alike."""
    help_line = next(line for line in describe_settings().splitlines() if "UPSTREAM_MAX_RECONNECTS" in line)
    assert "renewals" in help_line
    assert "do not count" in help_line
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `UPSTREAM_MAX_RECONNECTS`"))
    assert "drop" in row
    assert "renewals" in row
    assert "do not count" in row


def test_providers_setting_names_known_providers() -> None:
    """GATEWAY_PROVIDERS takes known provider names (or all); an unknown one is refused naming the known."""
    assert "twilio" in load_settings({}).providers
    assert load_settings({"GATEWAY_PROVIDERS": " Twilio , twilio"}).providers == ("twilio",)
    with pytest.raises(ConfigError, match=r"unknown provider.*bogus.*known: twilio"):
        load_settings({"GATEWAY_PROVIDERS": "twilio,bogus"})


def test_session_settings_for_the_preview_protocol() -> None:
    """TEMPERATURE is taken where the protocol has it; semantic VAD takes its eagerness; MAX_OUTPUT_TOKENS
    accepts inf (no limit)."""
    settings = load_settings(
        {
            "REALTIME_URL": "wss://r.openai.azure.com/openai/realtime?api-version=2024-10-01-preview&deployment=d",
            "REALTIME_API_KEY": "k",
            "TEMPERATURE": "0.7",
            "VAD_TYPE": "semantic_vad",
            "VAD_EAGERNESS": "high",
            "MAX_OUTPUT_TOKENS": "inf",
        }
    )
    assert (settings.temperature, settings.vad_eagerness, settings.max_output_tokens) == (0.7, "high", None)


def test_readme_settings_table_names_every_variable() -> None:
    """Every setting has a row (alone or with its kin) in the README's settings table."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    missing = [s.env for s in SETTINGS if not any(f"`{s.env}`" in row.split(" | ")[0] for row in rows)]
    assert missing == []
