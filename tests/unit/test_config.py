"""Settings: parsed from the environment once, every bad value refused with the variable's name."""

from __future__ import annotations

import pytest

from gateway.config import SECRET_SETTINGS, SETTINGS, describe_settings, load_settings
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
