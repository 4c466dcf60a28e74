"""Bot profiles: a bot per dialed number (or per custom parameter), from the TOML file `BOTS_FILE`.

```toml
[default]                      # optional: over the env settings, for every call
voice = "marin"

[[bot]]
name = "sales"                 # letters, digits, _ . - (it names the bot in logs)
numbers = ["+1 (555) 123-0001", "100"]
parameter = { name = "bot", value = "sales" }
instructions = "You sell..."
vad_type = "semantic_vad"
```

A bot's keys are those of `FIELDS`; each is checked by the parser of the env setting it overrides
(`voice` by BOT_VOICE's, `vad_threshold` by VAD_THRESHOLD's) and by the session's constructors, so a bad
file fails as a bad env value would, with a `ConfigError` naming the file, the bot and the key. Values
layer: env settings, then `[default]`, then the bot. `greeting = ""` and `transcription_model = ""` turn
an inherited one off; `tools = []` gives a bot no tools (left out: the gateway's BOT_TOOLS).

A call takes the first bot whose `parameter` equals one of its custom parameters, else the bot of the
number it is on, else `[default]`. Numbers are compared normalised (`normalize_number`): the user part of
a SIP URI or name-addr, the number of a tel: URI, without separators (space - . ( )), case-folded; a
leading `+` is kept, but ignored when comparing, so "+15551230001" matches Vonage's "15551230001".

`ProfileStore` holds the current `ProfileBook`; `reload` (on SIGHUP) swaps it whole or keeps the old one.
A call holds the `BotProfile` it selected, so a reload never changes a call in progress.
"""

from __future__ import annotations

import re
import signal
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import structlog

from gateway.call.bargein import BargeInMode
from gateway.call.core import CallConfig
from gateway.config import SETTINGS, Settings
from gateway.errors import ConfigError
from gateway.realtime.session import (
    Eagerness,
    NoiseReduction,
    SessionSettings,
    TurnDetection,
    TurnDetectionType,
)

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "DEFAULT_PROFILE",
    "DIALED_PARAMETERS",
    "FIELDS",
    "BotProfile",
    "ProfileBook",
    "ProfileStore",
    "ToolCheck",
    "dialed_numbers",
    "normalize_number",
]

log = structlog.get_logger(__name__)

DEFAULT_PROFILE: Final = "default"
# Where each leg puts the number it was dialed at: Vonage's keys are lower-case, SIP adds its Request-URI.
DIALED_PARAMETERS: Final = ("To", "to", "RequestUri")
# An outbound call (Twilio's Direction outbound-api, Plivo's outbound) is on the number it comes From.
OUTBOUND_PARAMETERS: Final = ("From", "from")
DIRECTION_PARAMETERS: Final = ("Direction", "direction")
MATCHERS: Final = ("numbers", "parameter")
SIP_SCHEMES: Final = ("sip", "sips")
_SEPARATORS: Final = str.maketrans("", "", " \t-.()")  # RFC 3966's visual separators, and blanks
_BOT_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LANGUAGE: Final = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")  # ISO 639 (en, de, pt-BR)
_SETTING: Final = {s.env: s for s in SETTINGS}

ToolCheck = Callable[[tuple[str, ...] | None, tuple[str, ...] | None], None]
"""Checks a bot's `tools` and `transfer_to` (None: the gateway's BOT_TOOLS, TRANSFER_TO) against the
gateway's tools; raises ValueError saying why. Run for each table that sets either."""


# -- the per-bot keys ------------------------------------------------------------------------------------


def _names(raw: list[Any]) -> tuple[str, ...]:
    """A list of non-empty strings, without repeats."""
    if not all(isinstance(item, str) and item.strip() for item in raw):
        raise ValueError("must be a list of non-empty strings")
    return tuple(dict.fromkeys(item.strip() for item in raw))


def _language(raw: str) -> str | None:
    """An ISO 639 language code such as en or pt-BR; empty: none."""
    if not raw:
        return None
    if not _LANGUAGE.fullmatch(raw):
        raise ValueError("expected an ISO 639 language code such as en or pt-BR")
    return raw


def _env_form(raw: str | int | float) -> str:
    """A TOML scalar as the env variable would spell it (stripped, as `load_settings` strips)."""
    if isinstance(raw, str):
        return raw.strip()
    return repr(raw) if isinstance(raw, float) else str(raw)


@dataclass(frozen=True, slots=True)
class _Field:
    """One per-bot key: the TOML types it takes; the env setting it overrides, whose parser checks it and
    whose value is its default (no setting: `parse` checks it, and it defaults to None); and a
    constructor of the session that refuses a bad value with a ValueError."""

    types: tuple[type, ...]
    env: str | None = None
    parse: Callable[[Any], Any] | None = None
    probe: Callable[[Any], object] | None = None

    def value(self, raw: Any) -> Any:
        """The checked value of `raw` (a TOML value of one of `types`); ValueError when it is bad."""
        if self.parse is not None:
            value = self.parse(raw)
        else:
            assert self.env is not None  # a key has a setting or a parser of its own
            value = _SETTING[self.env].parse(_env_form(raw))
        if self.probe is not None:
            self.probe(value)
        return value


FIELDS: Final[Mapping[str, _Field]] = {
    "instructions": _Field((str,), "BOT_INSTRUCTIONS"),
    "voice": _Field((str,), "BOT_VOICE", probe=lambda v: SessionSettings(voice=v)),
    "greeting": _Field((str,), "BOT_GREETING"),
    "tools": _Field((list,), parse=_names),
    "transfer_to": _Field((list,), parse=_names),
    "transcription_model": _Field((str,), "TRANSCRIPTION_MODEL"),
    "transcription_language": _Field((str,), parse=_language),
    "vad_type": _Field((str,), "VAD_TYPE", probe=TurnDetectionType),
    "vad_eagerness": _Field((str,), "VAD_EAGERNESS", probe=lambda v: TurnDetection(eagerness=v)),
    "vad_threshold": _Field((int, float), "VAD_THRESHOLD", probe=lambda v: TurnDetection(threshold=v)),
    "vad_silence_duration_ms": _Field(
        (int,), "VAD_SILENCE_DURATION_MS", probe=lambda v: TurnDetection(silence_duration_ms=v)
    ),
    "vad_prefix_padding_ms": _Field(
        (int,), "VAD_PREFIX_PADDING_MS", probe=lambda v: TurnDetection(prefix_padding_ms=v)
    ),
    "noise_reduction": _Field((str,), "NOISE_REDUCTION"),
    "barge_in": _Field((str,), "BARGE_IN", probe=BargeInMode),
    "max_output_tokens": _Field(
        (int, str), "MAX_OUTPUT_TOKENS", probe=lambda v: SessionSettings(max_output_tokens=v)
    ),
    "temperature": _Field((int, float), "TEMPERATURE", probe=lambda v: SessionSettings(temperature=v)),
    "dtmf_mode": _Field((str,), "DTMF_MODE"),
}
"""Every key a bot (or `[default]`) may set besides its matchers, by `BotProfile` attribute."""

_TYPE_NAMES: Final = {str: "a string", int: "an integer", float: "a number", list: "a list"}


# -- a profile ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BotProfile:
    """One bot: its name and the values it runs with, merged over the env settings (env settings'
    types: `vad_type`, `noise_reduction`, `barge_in`, `dtmf_mode` as their setting's strings).

    Turn it into the call's objects with `session_settings` and `call_config`; `tools` None means the
    gateway's BOT_TOOLS, `transfer_to` None its TRANSFER_TO."""

    name: str
    instructions: str
    voice: str
    greeting: str | None
    tools: tuple[str, ...] | None
    transfer_to: tuple[str, ...] | None
    transcription_model: str | None
    transcription_language: str | None
    vad_type: str
    vad_eagerness: Eagerness
    vad_threshold: float
    vad_silence_duration_ms: int
    vad_prefix_padding_ms: int
    noise_reduction: str
    barge_in: str
    max_output_tokens: int | None
    temperature: float | None
    dtmf_mode: str

    @classmethod
    def from_settings(cls, settings: Settings, name: str = DEFAULT_PROFILE) -> BotProfile:
        """The profile the env settings alone describe."""
        values: dict[str, Any] = {
            key: None if spec.env is None else getattr(settings, _SETTING[spec.env].attr)
            for key, spec in FIELDS.items()
        }
        return cls(name=name, **values)

    def session_settings(self, base: SessionSettings) -> SessionSettings:
        """`base` (the gateway's session) with this bot's instructions, voice, turn detection,
        transcription, noise reduction, reply limits and greeting."""
        kind = TurnDetectionType(self.vad_type)
        turn = replace(
            base.turn_detection,
            type=kind,
            eagerness=self.vad_eagerness,
            threshold=self.vad_threshold,
            prefix_padding_ms=self.vad_prefix_padding_ms,
            silence_duration_ms=self.vad_silence_duration_ms,
            # server_vad's idle timeout has no meaning for another kind of turn detection
            idle_timeout_ms=base.turn_detection.idle_timeout_ms
            if kind is TurnDetectionType.SERVER_VAD
            else None,
        )
        return replace(
            base,
            instructions=self.instructions,
            voice=self.voice,
            turn_detection=turn,
            transcription_model=self.transcription_model,
            transcription_language=self.transcription_language,
            noise_reduction=NoiseReduction.from_setting(self.noise_reduction),
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            greeting=self.greeting,
        )

    def call_config(self, base: CallConfig) -> CallConfig:
        """`base` (the gateway's call config) with this bot's barge-in mode, VAD silence, greeting and
        DTMF mode."""
        return replace(
            base,
            barge_in=BargeInMode(self.barge_in),
            vad_silence_ms=self.vad_silence_duration_ms,
            greeting=self.greeting,
            dtmf=replace(base.dtmf, forward=self.dtmf_mode == "forward"),
        )


# -- numbers ---------------------------------------------------------------------------------------------


def normalize_number(text: str) -> str:
    """The number (or SIP user) `text` names, as bots are matched on: "sip:+1555@host;user=phone",
    "<sip:100@pbx>;tag=x", "tel:+1-555-0100", "+1 (555) 0100" give "+1555", "100", "+15550100",
    "+15550100". Without a user part (sip:host) it is ""."""
    text = text.strip()
    if "<" in text:  # a name-addr: "Display" <uri>;params
        text = text.partition("<")[2].partition(">")[0]
    scheme, colon, rest = text.partition(":")
    scheme = scheme.strip().lower()
    if colon and scheme in SIP_SCHEMES:
        user, at, _host = rest.partition("@")  # a user part never holds an unescaped @
        text = user.partition(":")[0] if at else ""  # without a password
    elif colon and scheme == "tel":
        text = rest
    elif "@" in text:
        text = text.partition("@")[0]
    return unquote(text.partition(";")[0]).translate(_SEPARATORS).casefold()


def _match_key(number: str) -> str:
    return number.removeprefix("+")


def dialed_numbers(custom_parameters: Mapping[str, str]) -> tuple[str, ...]:
    """The numbers a call is on, normalised, most telling first: To (Vonage: to), then SIP's RequestUri;
    for an outbound call (a Direction starting with outbound), From."""
    direction = next((custom_parameters[k] for k in DIRECTION_PARAMETERS if k in custom_parameters), "")
    keys = OUTBOUND_PARAMETERS if direction.lower().startswith("outbound") else DIALED_PARAMETERS
    numbers = (normalize_number(custom_parameters[key]) for key in keys if key in custom_parameters)
    return tuple(number for number in numbers if number)


# -- the book --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    """A table of the file, for error messages."""

    source: str
    table: str

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"BOTS_FILE {self.source}: {self.table}: {key}: {reason}")


@dataclass(frozen=True, slots=True)
class _Entry:
    """A bot and what selects it."""

    profile: BotProfile
    numbers: tuple[str, ...]
    parameter: tuple[str, str] | None


@dataclass(frozen=True, slots=True, eq=False)
class ProfileBook:
    """The bots of one reading of the file. `select` gives a call's bot; `bots` are in file order."""

    default: BotProfile
    bots: tuple[BotProfile, ...] = ()
    by_parameter: tuple[tuple[str, str, BotProfile], ...] = ()
    by_number: Mapping[str, BotProfile] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProfileBook:
        """No file: every call gets the env settings' bot."""
        return cls(BotProfile.from_settings(settings))

    @classmethod
    def read(cls, path: str | Path, settings: Settings, check_tools: ToolCheck | None = None) -> ProfileBook:
        """Read and check the file; ConfigError naming the file (and the bot and key) when it is bad."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ConfigError(f"BOTS_FILE {path}: cannot be read: {reason}") from None
        return cls.parse(text, settings, str(path), check_tools)

    @classmethod
    def parse(
        cls, text: str, settings: Settings, source: str = "<text>", check_tools: ToolCheck | None = None
    ) -> ProfileBook:
        """The book a file's `text` describes; ConfigError naming `source`, the bot and the key."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"BOTS_FILE {source}: not valid TOML: {exc}") from None
        return _Reader(source, settings, check_tools).book(doc)

    def select(self, custom_parameters: Mapping[str, str]) -> BotProfile:
        """The call's bot: the first whose parameter the call carries, else the bot of a number the call
        is on (`dialed_numbers`), else the default."""
        for name, value, profile in self.by_parameter:
            if custom_parameters.get(name) == value:
                return profile
        for number in dialed_numbers(custom_parameters):
            found = self.by_number.get(_match_key(number))
            if found is not None:
                return found
        return self.default


class _Reader:
    """Turns a parsed file into a ProfileBook, checking every table and key."""

    def __init__(self, source: str, settings: Settings, check_tools: ToolCheck | None) -> None:
        self.source = source
        self.settings = settings
        self.check_tools = check_tools
        self.ga = settings.speaks_ga

    def book(self, doc: Mapping[str, Any]) -> ProfileBook:
        unknown = sorted(set(doc) - {"default", "bot"})
        if unknown:
            raise ConfigError(
                f"BOTS_FILE {self.source}: {unknown[0]}: unknown; expected [default] and [[bot]]"
            )
        default_table, bot_tables = doc.get("default", {}), doc.get("bot", [])
        if not isinstance(default_table, dict):
            raise ConfigError(f"BOTS_FILE {self.source}: default: must be a table, [default]")
        if not isinstance(bot_tables, list) or not all(isinstance(t, dict) for t in bot_tables):
            raise ConfigError(f"BOTS_FILE {self.source}: bot: must be tables, each starting with [[bot]]")
        where = _Where(self.source, "[default]")
        self._refuse_unknown(where, default_table, ())
        default = self._profile(
            BotProfile.from_settings(self.settings), DEFAULT_PROFILE, default_table, where
        )
        entries = [self._entry(index, table, default) for index, table in enumerate(bot_tables, 1)]
        return self._index(default, entries)

    def _entry(self, index: int, table: Mapping[str, Any], default: BotProfile) -> _Entry:
        name = table.get("name")
        if not isinstance(name, str) or not _BOT_NAME.fullmatch(name) or name == DEFAULT_PROFILE:
            raise _Where(self.source, f"[[bot]] number {index}").error(
                "name", f"expected 1 to 64 letters, digits, _ . or - (not {DEFAULT_PROFILE!r}), got {name!r}"
            )
        where = _Where(self.source, f"bot {name!r}")
        self._refuse_unknown(where, table, ("name", *MATCHERS))
        numbers, parameter = (
            _numbers(where, table.get("numbers", [])),
            _parameter(where, table.get("parameter")),
        )
        if not numbers and parameter is None:
            raise where.error("numbers", "a bot needs numbers and/or a parameter, or no call could select it")
        overrides = {key: value for key, value in table.items() if key in FIELDS}
        return _Entry(self._profile(default, name, overrides, where), numbers, parameter)

    @staticmethod
    def _refuse_unknown(where: _Where, table: Mapping[str, Any], matchers: Iterable[str]) -> None:
        known = (*matchers, *FIELDS)
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise where.error(unknown[0], f"unknown key; known keys: {', '.join(known)}")

    def _profile(self, base: BotProfile, name: str, table: Mapping[str, Any], where: _Where) -> BotProfile:
        """`base` with the values `table` sets, each checked, then checked together."""
        values = {key: _value(where, key, raw) for key, raw in table.items()}
        values = self._reconcile(replace(base, **values), values, where)
        profile = replace(base, name=name, **values)
        changed = [key for key in ("tools", "transfer_to") if key in values]
        if self.check_tools is not None and changed:
            try:
                self.check_tools(profile.tools, profile.transfer_to)
            except ValueError as exc:
                raise where.error(changed[0], str(exc)) from None
        return profile

    def _reconcile(self, merged: BotProfile, values: dict[str, Any], where: _Where) -> dict[str, Any]:
        """The checks across keys that the env settings have too. A value this table sets is refused; one
        it inherits that no longer applies (semantic_vad's eagerness under server_vad, a transcription
        language once transcription is off) is dropped."""
        if merged.vad_type != "semantic_vad" and merged.vad_eagerness != "auto":
            if "vad_eagerness" in values:
                raise where.error(
                    "vad_eagerness", f'applies to vad_type = "semantic_vad" only, not {merged.vad_type!r}'
                )
            values = {**values, "vad_eagerness": "auto"}
        if merged.transcription_language is not None and merged.transcription_model is None:
            if "transcription_language" in values:
                raise where.error("transcription_language", "needs a transcription_model")
            values = {**values, "transcription_language": None}
        if values.get("temperature") is not None and self.ga:
            raise where.error(
                "temperature", "applies to the preview protocol only: the GA protocol has no temperature"
            )
        return values

    def _index(self, default: BotProfile, entries: list[_Entry]) -> ProfileBook:
        names: set[str] = set()
        by_number: dict[str, BotProfile] = {}
        by_parameter: dict[tuple[str, str], BotProfile] = {}
        for entry in entries:
            where = _Where(self.source, f"bot {entry.profile.name!r}")
            if entry.profile.name in names:
                raise where.error("name", "another bot has this name")
            names.add(entry.profile.name)
            for number in entry.numbers:
                other = by_number.setdefault(_match_key(number), entry.profile)
                if other is not entry.profile:
                    raise where.error("numbers", f"{number} is already bot {other.name!r}'s")
            if entry.parameter is not None:
                other = by_parameter.setdefault(entry.parameter, entry.profile)
                if other is not entry.profile:
                    raise where.error("parameter", f"bot {other.name!r} matches the same parameter first")
        return ProfileBook(
            default,
            tuple(entry.profile for entry in entries),
            tuple((name, value, profile) for (name, value), profile in by_parameter.items()),
            by_number,
        )


def _value(where: _Where, key: str, raw: Any) -> Any:
    """One key's checked value; ConfigError naming the key when its type or value is bad."""
    spec = FIELDS[key]
    if isinstance(raw, bool) or not isinstance(raw, spec.types):
        # TOML's integers are numbers too: say "a number", not "an integer or a number"
        expected = " or ".join(_TYPE_NAMES[t] for t in spec.types if not (t is int and float in spec.types))
        raise where.error(key, f"expected {expected}, got {type(raw).__name__} {_shown(raw)}")
    try:
        return spec.value(raw)
    except ValueError as exc:
        raise where.error(key, f"{_shown(raw)} is invalid: {exc}") from None


def _shown(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def _numbers(where: _Where, raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise where.error("numbers", 'expected a list of strings (quote numbers: ["+15551230001", "100"])')
    numbers = []
    for item in raw:
        number = normalize_number(item)
        digits = number.removeprefix("+")
        if not digits or (number.startswith("+") and not digits.isdigit()):
            raise where.error("numbers", f"{item!r} is not a number or a SIP user")
        numbers.append(number)
    return tuple(dict.fromkeys(numbers))


def _parameter(where: _Where, raw: object) -> tuple[str, str] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, dict)
        or set(raw) != {"name", "value"}
        or not all(isinstance(v, str) for v in raw.values())
        or not raw["name"]
    ):
        raise where.error("parameter", 'expected { name = "...", value = "..." } (strings, a name not empty)')
    return raw["name"], raw["value"]


# -- the store -------------------------------------------------------------------------------------------


class ProfileStore:
    """The gateway's current ProfileBook. `reload` reads the file again and swaps the book whole, or keeps
    the old one (logged); calls hold the BotProfile they selected, so none is changed or dropped."""

    def __init__(
        self,
        book: ProfileBook,
        settings: Settings,
        path: Path | None = None,
        check_tools: ToolCheck | None = None,
    ) -> None:
        self._book = book
        self._settings = settings
        self._check_tools = check_tools
        self.path = path

    @classmethod
    def load(
        cls, path: str | Path | None, settings: Settings, check_tools: ToolCheck | None = None
    ) -> ProfileStore:
        """The store of the file at `path` (None or "": the env settings' bot alone); at start-up, a
        ConfigError must fail it."""
        if not path:
            return cls(ProfileBook.from_settings(settings), settings, None, check_tools)
        book = ProfileBook.read(path, settings, check_tools)
        log.info("bots_file_loaded", path=str(path), bots=len(book.bots))
        return cls(book, settings, Path(path), check_tools)

    @property
    def book(self) -> ProfileBook:
        """The book new calls select from."""
        return self._book

    def select(self, custom_parameters: Mapping[str, str]) -> BotProfile:
        """A new call's bot, from the current book (keep it for the whole call)."""
        return self._book.select(custom_parameters)

    def reload(self) -> bool:
        """Read the file again: True when the new book is in place; False (logged) when it is kept."""
        if self.path is None:
            log.info("bots_file_reload_skipped", reason="BOTS_FILE is not set")
            return False
        try:
            book = ProfileBook.read(self.path, self._settings, self._check_tools)
        except ConfigError as exc:
            log.warning(
                "bots_file_reload_failed",
                path=str(self.path),
                reason=str(exc),
                kept_bots=len(self._book.bots),
            )
            return False
        self._book = book
        log.info("bots_file_reloaded", path=str(self.path), bots=len(book.bots))
        return True

    def install_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reload on SIGHUP (which would otherwise end the process); `remove_sighup` at shutdown."""
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    @staticmethod
    def remove_sighup(loop: asyncio.AbstractEventLoop) -> None:
        """Stop reloading on SIGHUP (from then on it is ignored, not fatal)."""
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
