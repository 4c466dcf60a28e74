"""Bot profiles (BOTS_FILE): parsing, every refusal naming file, bot and key, number matching on every
leg's parameters, precedence, and the per-call session settings and call config they give."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
import structlog

from gateway.backend import bridge_settings_from, session_settings_from
from gateway.call.bargein import BargeInMode
from gateway.call.core import CallConfig
from gateway.call.dtmf import DtmfSettings
from gateway.config import SETTINGS, Settings, load_settings
from gateway.errors import ConfigError
from gateway.profiles import (
    DEFAULT_PROFILE,
    FIELDS,
    BotProfile,
    ProfileBook,
    ProfileStore,
    dialed_numbers,
    normalize_number,
)
from gateway.realtime.session import (
    AudioFormat,
    NoiseReduction,
    SessionSettings,
    TurnDetection,
    TurnDetectionType,
)

SOURCE = "/etc/gateway/bots.toml"
PREVIEW = {
    "REALTIME_URL": "wss://r.openai.azure.com/openai/realtime?api-version=2024-10-01-preview&deployment=d",
    "REALTIME_API_KEY": "k",
}

# The README's example, whole.
EXAMPLE = """
[default]
voice = "marin"
noise_reduction = "near_field"

[[bot]]
name = "sales"
numbers = ["+1 (555) 123-0001", "100"]
instructions = "You are Acme's sales assistant. Keep answers short."
greeting = "Greet the caller as Acme sales and ask how you can help."
tools = ["end_call", "transfer_call"]
transfer_to = ["+15551230099"]
vad_type = "semantic_vad"
vad_eagerness = "high"
max_output_tokens = 300

[[bot]]
name = "support"
numbers = ["+15551230002", "sip:200@pbx.example.com"]
parameter = { name = "bot", value = "support" }
instructions = "You are Acme's support desk. Ask for the order number first."
voice = "cedar"
transcription_model = "whisper-1"
transcription_language = "en"
vad_threshold = 0.6
vad_silence_duration_ms = 700
vad_prefix_padding_ms = 200
barge_in = "both"
dtmf_mode = "off"

[[bot]]
name = "spanish"
parameter = { name = "lang", value = "es" }
instructions = "Eres el asistente de Acme. Responde en español."
transcription_model = "whisper-1"
transcription_language = "es"
greeting = ""
"""


def env(**overrides: str) -> Settings:
    """Settings from the defaults and `overrides`."""
    return load_settings(overrides)


def book(text: str, settings: Settings | None = None) -> ProfileBook:
    """The book `text` describes, read as SOURCE."""
    return ProfileBook.parse(text, settings or env(), SOURCE)


def bot(body: str, name: str = "x", numbers: str = '["100"]') -> str:
    """A file of one bot with `body`'s keys."""
    return f'[[bot]]\nname = "{name}"\nnumbers = {numbers}\n{body}\n'


# -- parsing ----------------------------------------------------------------------------------------------


def test_every_key_is_a_profile_attribute_with_a_setting_or_a_parser() -> None:
    """FIELDS and BotProfile name the same keys; each key's env setting is a declared one."""
    assert {f.name for f in fields(BotProfile)} == {"name", *FIELDS}
    declared = {s.env for s in SETTINGS}
    for key, spec in FIELDS.items():
        assert (spec.env in declared) if spec.env is not None else spec.parse is not None, key


def test_the_readme_example_parses() -> None:
    """The example file gives three bots in file order, each merged over [default] and the env."""
    example = book(EXAMPLE)
    assert [b.name for b in example.bots] == ["sales", "support", "spanish"]
    sales, support, spanish = example.bots
    assert (sales.voice, sales.noise_reduction, sales.vad_type, sales.vad_eagerness) == (
        "marin",
        "near_field",
        "semantic_vad",
        "high",
    )
    assert (sales.tools, sales.transfer_to, sales.max_output_tokens) == (
        ("end_call", "transfer_call"),
        ("+15551230099",),
        300,
    )
    assert (support.voice, support.barge_in, support.dtmf_mode, support.vad_threshold) == (
        "cedar",
        "both",
        "off",
        0.6,
    )
    assert support.tools is None  # the gateway's BOT_TOOLS
    assert (spanish.greeting, spanish.transcription_language, spanish.voice) == (None, "es", "marin")
    assert example.default.name == DEFAULT_PROFILE
    assert example.default.voice == "marin"
    assert example.default.instructions == env().bot_instructions


def test_an_empty_file_is_the_env_settings_bot() -> None:
    """A file with no tables selects the env settings' bot for every call."""
    empty = book("")
    assert empty.bots == ()
    assert empty.select({"To": "+15551230001"}) == BotProfile.from_settings(env())


def test_values_are_checked_and_normalised_like_the_env_settings() -> None:
    """Each value goes through its setting's parser: choices are case-folded, inf is no token limit,
    a greeting of "" is none, integers are accepted where a number is asked for."""
    profile = book(
        bot('barge_in = "LOCAL"\nmax_output_tokens = "inf"\ngreeting = ""\nvad_threshold = 1\ntools = []')
    ).bots[0]
    assert (profile.barge_in, profile.max_output_tokens, profile.greeting) == ("local", None, None)
    assert profile.vad_threshold == 1.0
    assert profile.tools == ()  # no tools at all, unlike a bot that leaves tools out


BAD_BOTS = [
    ('voice = ""', "voice", "must not be empty"),
    ("voice = 3", "voice", "expected a string, got int 3"),
    ('barge_in = "always"', "barge_in", "must be one of server, local, both"),
    ('vad_type = "energy"', "vad_type", "must be one of server_vad, semantic_vad"),
    ('vad_eagerness = "eager"', "vad_eagerness", "must be one of low, medium, high, auto"),
    ('vad_eagerness = "low"', "vad_eagerness", 'applies to vad_type = "semantic_vad" only'),
    ("vad_threshold = 1.5", "vad_threshold", "must be between 0.0 and 1.0"),
    ('vad_threshold = "0.5"', "vad_threshold", "expected a number, got str"),
    ("vad_threshold = true", "vad_threshold", "expected a number, got bool"),
    ("vad_silence_duration_ms = -1", "vad_silence_duration_ms", "must be between 0 and 10000"),
    ("vad_silence_duration_ms = 1.5", "vad_silence_duration_ms", "expected an integer, got float"),
    ("vad_prefix_padding_ms = 6000", "vad_prefix_padding_ms", "must be between 0 and 5000"),
    ('noise_reduction = "studio"', "noise_reduction", "must be one of near_field, far_field, off"),
    ("max_output_tokens = 5000", "max_output_tokens", "must be between 1 and 4096"),
    ('max_output_tokens = "lots"', "max_output_tokens", "must be an integer"),
    ("temperature = 0.8", "temperature", "preview protocol only"),
    ('dtmf_mode = "collect"', "dtmf_mode", "must be one of forward, off"),
    ('transcription_language = "en"', "transcription_language", "needs a transcription_model"),
    (
        'transcription_model = "whisper-1"\ntranscription_language = "english!"',
        "transcription_language",
        "ISO 639",
    ),
    ('tools = "end_call"', "tools", "expected a list, got str"),
    ('tools = ["end_call", 3]', "tools", "list of non-empty strings"),
    ('transfer_to = [""]', "transfer_to", "list of non-empty strings"),
    ('instructions = ["a"]', "instructions", "expected a string, got list"),
    ("voice = 1979-05-27T07:32:00Z", "voice", "expected a string, got datetime"),
    ("speed = 1.2", "speed", "unknown key; known keys: name, numbers, parameter, instructions"),
    ('parameter = "bot=sales"', "parameter", 'expected { name = "...", value = "..." }'),
    ('parameter = { name = "bot" }', "parameter", 'expected { name = "...", value = "..." }'),
    ('parameter = { name = "", value = "x" }', "parameter", "a name not empty"),
    ('parameter = { name = "bot", value = 1 }', "parameter", "strings"),
]


@pytest.mark.parametrize(("body", "key", "reason"), BAD_BOTS)
def test_a_bad_value_names_file_bot_and_key(body: str, key: str, reason: str) -> None:
    """A bad key or value is a ConfigError: BOTS_FILE, the file, the bot, the key, then why."""
    with pytest.raises(ConfigError) as refused:
        book(bot(body, name="sales"))
    message = str(refused.value)
    assert message.startswith(f"BOTS_FILE {SOURCE}: bot 'sales': {key}: "), message
    assert reason in message


@pytest.mark.parametrize(("body", "key", "reason"), [b for b in BAD_BOTS if not b[0].startswith("parameter")])
def test_a_bad_default_names_the_default_table(body: str, key: str, reason: str) -> None:
    """The same values in [default] are refused naming [default] and the key."""
    with pytest.raises(ConfigError) as refused:
        book(f"[default]\n{body}\n")
    message = str(refused.value)
    if key == "speed":
        reason = "unknown key; known keys: instructions"  # [default] has no matchers
    assert message.startswith(f"BOTS_FILE {SOURCE}: [default]: {key}: "), message
    assert reason in message


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ('[[bot]]\nnumbers = ["1"]', "[[bot]] number 1: name", "got None"),
        (
            '[[bot]]\nname = "a"\nnumbers = ["1"]\n[[bot]]\nname = "b c"\nnumbers = ["2"]',
            "[[bot]] number 2: name",
            "'b c'",
        ),
        ('[[bot]]\nname = "default"\nnumbers = ["1"]', "[[bot]] number 1: name", "not 'default'"),
        ('[[bot]]\nname = "x"', "bot 'x': numbers", "needs numbers and/or a parameter"),
        ('[[bot]]\nname = "x"\nnumbers = []', "bot 'x': numbers", "needs numbers and/or a parameter"),
        ('[[bot]]\nname = "x"\nnumbers = [100]', "bot 'x': numbers", "quote numbers"),
        ('[[bot]]\nname = "x"\nnumbers = "100"', "bot 'x': numbers", "a list of strings"),
        (
            '[[bot]]\nname = "x"\nnumbers = ["sip:pbx.example.com"]',
            "bot 'x': numbers",
            "not a number or a SIP user",
        ),
        ('[[bot]]\nname = "x"\nnumbers = ["+sales"]', "bot 'x': numbers", "not a number or a SIP user"),
        ('[[bot]]\nname = "x"\nnumbers = [" - "]', "bot 'x': numbers", "not a number or a SIP user"),
        (
            '[[bot]]\nname = "x"\nnumbers = ["1"]\n[[bot]]\nname = "x"\nnumbers = ["2"]',
            "bot 'x': name",
            "another bot has this name",
        ),
        (
            '[[bot]]\nname = "a"\nnumbers = ["+15551230001"]\n'
            '[[bot]]\nname = "b"\nnumbers = ["1-555-123-0001"]',
            "bot 'b': numbers",
            "15551230001 is already bot 'a''s",
        ),
        (
            '[[bot]]\nname = "a"\nparameter = { name = "bot", value = "s" }\n'
            '[[bot]]\nname = "b"\nparameter = { name = "bot", value = "s" }',
            "bot 'b': parameter",
            "bot 'a' matches the same parameter first",
        ),
        ("[bots]\n", "bots", "unknown; expected [default] and [[bot]]"),
        ('default = "x"\n', "default", "must be a table"),
        ('[bot]\nname = "x"', "bot", "each starting with [[bot]]"),
        ("bot = [1, 2]", "bot", "each starting with [[bot]]"),
        ("[[bot]\n", "not valid TOML", "line 1"),
    ],
)
def test_a_bad_table_names_file_and_place(text: str, where: str, reason: str) -> None:
    """Missing or malformed names, matchers and tables are refused naming the file and the place."""
    with pytest.raises(ConfigError) as refused:
        book(text)
    message = str(refused.value)
    assert message.startswith(f"BOTS_FILE {SOURCE}: {where}"), message
    assert reason in message


def test_temperature_is_taken_on_the_preview_protocol() -> None:
    """TEMPERATURE's rule holds per bot: refused on GA (above), taken on a preview endpoint, in range."""
    assert book(bot("temperature = 0.7"), env(**PREVIEW)).bots[0].temperature == 0.7
    with pytest.raises(ConfigError, match=r"bot 'x': temperature: 2 is invalid: must be between 0.6 and 1.2"):
        book(bot("temperature = 2"), env(**PREVIEW))


def test_a_value_no_longer_applying_is_dropped_when_inherited() -> None:
    """A bot on server_vad drops the semantic_vad eagerness it inherits, and a bot that turns transcription
    off drops the inherited language: only a value the bot sets itself is refused."""
    default = (
        '[default]\nvad_type = "semantic_vad"\nvad_eagerness = "low"\ntranscription_model = "whisper-1"\n'
    )
    default += 'transcription_language = "de"\n'
    profile = book(default + bot('vad_type = "server_vad"\ntranscription_model = ""')).bots[0]
    assert (profile.vad_type, profile.vad_eagerness) == ("server_vad", "auto")
    assert (profile.transcription_model, profile.transcription_language) == (None, None)
    semantic = book(default + bot('vad_eagerness = "high"')).bots[0]
    assert (semantic.vad_type, semantic.vad_eagerness, semantic.transcription_language) == (
        "semantic_vad",
        "high",
        "de",
    )


def test_the_tool_check_names_the_key_it_refuses() -> None:
    """A ToolCheck given to the reader sees each table's tools and transfer_to; its ValueError names the
    bot and the key."""
    seen: list[tuple[tuple[str, ...] | None, tuple[str, ...] | None]] = []

    def check(tools: tuple[str, ...] | None, transfer_to: tuple[str, ...] | None) -> None:
        seen.append((tools, transfer_to))
        if tools is not None and "lookup" in tools:
            raise ValueError("no tool named lookup in TOOLS_FILE")

    ProfileBook.parse(
        bot('transfer_to = ["+1555"]') + bot('tools = ["end_call"]', "y", '["2"]'), env(), SOURCE, check
    )
    assert seen == [(None, ("+1555",)), (("end_call",), None)]
    with pytest.raises(ConfigError, match=r"bot 'x': tools: no tool named lookup in TOOLS_FILE"):
        ProfileBook.parse(bot('tools = ["lookup"]'), env(), SOURCE, check)


def test_read_names_a_missing_file(tmp_path: Path) -> None:
    """A file that cannot be read is a ConfigError naming it."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"BOTS_FILE {missing}: cannot be read: No such file"):
        ProfileBook.read(missing, env())


def test_bots_file_setting(tmp_path: Path) -> None:
    """BOTS_FILE is a path, unset by default; a file that does not load stops start-up (load_settings)."""
    assert env().bots_file is None
    path = tmp_path / "bots.toml"
    path.write_text('[[bot]]\nname = "sales"\nnumbers = ["100"]\n')
    assert env(BOTS_FILE=str(path)).bots_file == str(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        env(BOTS_FILE=str(tmp_path / "absent.toml"))
    path.write_text('[[bot]]\nname = "sales"\nnumbers = ["100"]\ntools = ["nope"]\n')
    with pytest.raises(ConfigError, match="unknown tools: nope"):
        env(BOTS_FILE=str(path))


# -- numbers and selection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("+15551230001", "+15551230001"),
        ("+1 (555) 123-0001", "+15551230001"),
        ("1.555.123.0001", "15551230001"),
        ("100", "100"),
        ("sip:100@10.0.0.5;transport=udp", "100"),
        ("sips:+15551230001@trunk.example.com:5061", "+15551230001"),
        ("sip:+15551230001;npdi@trunk.example.com;user=phone", "+15551230001"),
        ("SIP:Sales@PBX", "sales"),
        ("<sip:100@pbx.example.com>;tag=abc", "100"),
        ('"Front desk" <sip:100@pbx.example.com;transport=tcp>', "100"),
        ("sip:%2B15551230001@trunk", "+15551230001"),
        ("sip:alice:secret@pbx", "alice"),
        ("sip:pbx.example.com", ""),
        ("tel:+1-555-123-0001;phone-context=example.com", "+15551230001"),
        ("100@pbx", "100"),
        ("  ", ""),
    ],
)
def test_normalize_number(text: str, number: str) -> None:
    """SIP URIs and name-addrs give their user part, tel: URIs their number; separators go, + stays."""
    assert normalize_number(text) == number


@pytest.mark.parametrize(
    ("parameters", "numbers"),
    [
        ({"CallSid": "CA1", "From": "+15550100000", "To": "+15551230001"}, ("+15551230001",)),  # Twilio
        ({"from": "15550100000", "to": "15551230001"}, ("15551230001",)),  # Vonage
        (
            {
                "From": "sip:caller@trunk",
                "To": "sip:+15551230001@gw;user=phone",
                "RequestUri": "sip:gw@10.0.0.9",
            },
            ("+15551230001", "gw"),
        ),  # SIP
        ({"From": "+15550100000", "To": "+15551230001", "Direction": "outbound-api"}, ("+15550100000",)),
        ({"From": "+15550100000", "To": "+15551230001", "Direction": "inbound"}, ("+15551230001",)),
        ({"correlationId": "c0ffee"}, ()),  # ACS, today
    ],
)
def test_dialed_numbers(parameters: dict[str, str], numbers: tuple[str, ...]) -> None:
    """Each leg's dialed number is found under its keys; an outbound call is on the number it is From."""
    assert dialed_numbers(parameters) == numbers


def test_select_by_number_on_every_leg() -> None:
    """The dialed number selects its bot whatever leg carried it, with or without the + of E.164."""
    example = book(EXAMPLE)
    cases = {
        "sales": [
            {"To": "+15551230001"},  # Twilio, SignalWire, Telnyx, Plivo, Exotel
            {"to": "15551230001"},  # Vonage: no +
            {"To": "sip:100@gw.example.com;transport=udp"},  # SIP, an extension
            {"To": "sip:+1-555-123-0001@gw;user=phone"},
        ],
        "support": [
            {"To": "<sip:200@pbx.example.com>"},
            {"To": "sip:999@gw", "RequestUri": "sip:200@10.0.0.5:5060"},  # no bot on To: the Request-URI's
        ],
        DEFAULT_PROFILE: [{"To": "+15559999999"}, {"correlationId": "c0ffee"}, {}],
    }
    for name, calls in cases.items():
        for parameters in calls:
            assert example.select(parameters).name == name, parameters


def test_parameters_come_before_numbers_in_file_order() -> None:
    """A custom parameter selects its bot even on another bot's number; the first matching bot wins."""
    example = book(EXAMPLE)
    assert example.select({"To": "+15551230001", "bot": "support"}).name == "support"
    assert example.select({"To": "+15551230001", "lang": "es"}).name == "spanish"
    assert example.select({"lang": "es", "bot": "support"}).name == "support"
    assert example.select({"To": "+15551230001", "bot": "Support"}).name == "sales"  # values are exact


# -- the call's objects -----------------------------------------------------------------------------------


def test_the_env_bot_changes_nothing() -> None:
    """The env settings' own bot gives back the gateway's session settings and call config unchanged."""
    for settings in (
        env(),
        env(VAD_TYPE="semantic_vad", VAD_EAGERNESS="low", BARGE_IN="both", DTMF_MODE="off"),
    ):
        session = session_settings_from(settings)
        core = bridge_settings_from(settings, session).core
        profile = BotProfile.from_settings(settings)
        assert profile.session_settings(session) == session
        assert profile.call_config(core) == core


def test_session_settings_take_the_bot_and_keep_the_rest() -> None:
    """A bot's values replace the session's; audio formats, model and VAD response flags stay the base's."""
    base = SessionSettings(
        input_format=AudioFormat.G711_ULAW,
        output_format=AudioFormat.G711_ULAW,
        model="gpt-realtime",
        turn_detection=TurnDetection(create_response=False, interrupt_response=False, idle_timeout_ms=5000),
    )
    support = book(EXAMPLE).bots[1]
    session = support.session_settings(base)
    assert (session.input_format, session.output_format, session.model) == (
        AudioFormat.G711_ULAW,
        AudioFormat.G711_ULAW,
        "gpt-realtime",
    )
    assert (session.instructions, session.voice, session.greeting) == (support.instructions, "cedar", None)
    assert (session.transcription_model, session.transcription_language) == ("whisper-1", "en")
    assert session.noise_reduction is NoiseReduction.NEAR_FIELD
    assert session.turn_detection == TurnDetection(
        threshold=0.6,
        prefix_padding_ms=200,
        silence_duration_ms=700,
        create_response=False,
        interrupt_response=False,
        idle_timeout_ms=5000,
    )
    sales = book(EXAMPLE).bots[0].session_settings(base)
    assert sales.turn_detection.type is TurnDetectionType.SEMANTIC_VAD
    assert (sales.turn_detection.eagerness, sales.turn_detection.idle_timeout_ms) == ("high", None)
    assert sales.max_output_tokens == 300


def test_call_config_takes_the_bot_and_keeps_the_rest() -> None:
    """A bot's barge-in, VAD silence, greeting and DTMF mode replace the call config's; the rest stays."""
    base = CallConfig(append_ms=40, greeting="hello", dtmf=DtmfSettings(terminator="*", max_keys=4))
    support = book(EXAMPLE).bots[1]
    config = support.call_config(base)
    assert config == replace(
        base,
        barge_in=BargeInMode.BOTH,
        vad_silence_ms=700,
        greeting=None,
        dtmf=DtmfSettings(forward=False, terminator="*", max_keys=4),
    )
    sales = book(EXAMPLE).bots[0].call_config(base)
    assert sales.greeting == "Greet the caller as Acme sales and ask how you can help."


# -- the store --------------------------------------------------------------------------------------------


def test_store_without_a_file_is_the_env_bot() -> None:
    """No BOTS_FILE: every call gets the env settings' bot, and a reload is skipped."""
    store = ProfileStore.load(None, env())
    assert store.select({"To": "100"}) == BotProfile.from_settings(env())
    with structlog.testing.capture_logs() as logs:
        assert store.reload() is False
    assert [entry["event"] for entry in logs] == ["bots_file_reload_skipped"]


def test_store_load_refuses_a_bad_file(tmp_path: Path) -> None:
    """At start-up a bad file is a ConfigError, so the gateway does not start."""
    path = tmp_path / "bots.toml"
    path.write_text(bot('voice = ""'), encoding="utf-8")
    with pytest.raises(ConfigError, match="bot 'x': voice"):
        ProfileStore.load(str(path), env())


def test_store_reload_swaps_or_keeps_the_book(tmp_path: Path) -> None:
    """A good file replaces the book (a profile selected before stays as it was); a bad one keeps the old
    book and logs why."""
    path = tmp_path / "bots.toml"
    path.write_text(bot('voice = "cedar"'), encoding="utf-8")
    store = ProfileStore.load(path, env())
    held = store.select({"To": "100"})
    path.write_text(bot('voice = "marin"') + bot("", "y", '["200"]'), encoding="utf-8")
    with structlog.testing.capture_logs() as logs:
        assert store.reload() is True
        good = store.book
        path.write_text(bot('voice = "marin"\nbarge_in = "never"'), encoding="utf-8")
        assert store.reload() is False
    assert store.book is good
    assert [b.name for b in store.book.bots] == ["x", "y"]
    assert (held.voice, store.select({"To": "100"}).voice) == ("cedar", "marin")
    assert logs[0] == {"event": "bots_file_reloaded", "log_level": "info", "path": str(path), "bots": 2}
    assert logs[1]["event"] == "bots_file_reload_failed"
    assert logs[1]["log_level"] == "warning"
    assert "bot 'x': barge_in: 'never' is invalid" in logs[1]["reason"]
    assert logs[1]["kept_bots"] == 2
