"""SIP_CODECS: the codecs a SIP call may use, in our order of preference, from the settings to the leg."""

from __future__ import annotations

import pytest

from gateway.backend import sip_settings_from
from gateway.config import load_settings
from gateway.errors import ConfigError


def test_default_prefers_wideband() -> None:
    """Unset, SIP_CODECS is G.722 first, then PCMU and PCMA, and reaches the SIP leg's settings."""
    settings = load_settings({})
    assert settings.sip_codecs == ("G722", "PCMU", "PCMA")
    assert sip_settings_from(settings).codecs == ("G722", "PCMU", "PCMA")


def test_order_case_and_duplicates() -> None:
    """Names are case-insensitive, their order is kept, and a repeated name counts once."""
    assert load_settings({"SIP_CODECS": "pcma, G722,pcma"}).sip_codecs == ("PCMA", "G722")


@pytest.mark.parametrize("value", ["opus", "PCMU,G729", ",", "G722/16000"])
def test_unknown_or_empty_is_refused(value: str) -> None:
    """A codec we cannot carry, or no codec at all, is a configuration error naming the variable."""
    with pytest.raises(ConfigError, match="SIP_CODECS"):
        load_settings({"SIP_CODECS": value})


def test_g711_audio_mode_takes_pcmu_only() -> None:
    """With AUDIO_MODE=g711 the session takes mu-law untouched: the SIP leg negotiates PCMU alone."""
    settings = load_settings({"AUDIO_MODE": "g711", "SIP_CODECS": "G722,PCMA,PCMU"})
    assert sip_settings_from(settings).codecs == ("PCMU",)
