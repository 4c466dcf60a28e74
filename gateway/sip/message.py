"""SIP messages (RFC 3261 sections 7, 18.3, 20, 25), sans-I/O.

`parse(data)` turns one whole message (a UDP datagram, or one `StreamFramer` output on TCP/TLS) into a
`SipRequest` or `SipResponse`; `serialize()` turns one back into canonical bytes with a correct
Content-Length. Anything malformed raises `SipParseError(reason, status)`; when the start line and the
header lines were readable, the error carries them as `partial`, so the user agent can still route a 400
to the sender's Via. Nothing else ever escapes `parse`, whatever the bytes.

Headers live in `Headers`: case-insensitive, order-preserving, multi-valued; compact forms (`v`, `i`,
`f`, ...) are expanded and continuation lines unfolded on parse. Helpers parse the pieces the user agent
needs: `SipUri`, `NameAddr` (From/To/Contact/Route), `Via` (with RFC 3581 `received`/`rport`), and
generate tags and branches from a `random.Random` the caller passes in (seeded in tests).
"""

from __future__ import annotations

import collections
import functools
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Final

from gateway.errors import RemoteProtocolError

__all__ = [
    "BRANCH_COOKIE",
    "COMPACT_FORMS",
    "MAX_MESSAGE_SIZE",
    "SIP_VERSION",
    "Headers",
    "NameAddr",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "StreamFramer",
    "Via",
    "bare_host",
    "canonical_name",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse",
    "parse_params",
    "split_commas",
    "unquote",
]

MAX_MESSAGE_SIZE: Final = 65_536
SIP_VERSION: Final = "SIP/2.0"
BRANCH_COOKIE: Final = "z9hG4bK"  # RFC 3261 8.1.1.7: branches of RFC 3261 elements start with it
DEFAULT_PORTS: Final = {"udp": 5060, "tcp": 5060, "tls": 5061}

COMPACT_FORMS: Final = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
# Names whose canonical spelling is not plain Title-Case; any other known name is spelt as written here.
_KNOWN_NAMES: Final = {
    name.lower(): name
    for name in (
        *COMPACT_FORMS.values(),
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Content-Disposition",
        "Content-Language",
        "CSeq",
        "Date",
        "Diversion",
        "Error-Info",
        "Expires",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "Min-SE",
        "MIME-Version",
        "Organization",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Remote-Party-ID",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Timestamp",
        "Unsupported",
        "User-Agent",
        "Warning",
        "WWW-Authenticate",
    )
}
# Headers a request or response carries at most once (a second copy is malformed, never guessed at).
_SINGLETONS: Final = ("Call-ID", "CSeq", "From", "To", "Content-Length", "Max-Forwards", "Content-Type")

_TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
_REQUEST_LINE: Final = re.compile(rf"({_TOKEN}) (\S+) (SIP/2\.0)", re.IGNORECASE | re.ASCII)
_STATUS_LINE: Final = re.compile(r"(SIP/2\.0) ([1-6][0-9][0-9])(?: ([^\r\n]*))?", re.IGNORECASE | re.ASCII)
_CSEQ: Final = re.compile(rf"([0-9]{{1,10}})[ \t]+({_TOKEN})", re.ASCII)
_DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)
_SPACE: Final = re.compile(r"\s")
_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):(\S+)", re.ASCII)
_HOST: Final = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+", re.ASCII)
_SENT_PROTOCOL: Final = re.compile(rf"({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})", re.ASCII)


class SipParseError(RemoteProtocolError):
    """The peer sent a malformed SIP message; `status` is the response it deserves (400, 513, ...).

    `partial` is the message as far as it could be read (start line and headers), or None when not even
    that: with it, the user agent can answer `status` to the request's Via; without it, it drops the bytes.
    """

    def __init__(self, reason: str, status: int = 400, partial: SipMessage | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


@functools.lru_cache(maxsize=512)
def canonical_name(name: str) -> str:
    """The full, canonically spelt header name for `name` (compact forms expanded, `call-id` -> `Call-ID`)."""
    name = name.strip()
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    return _KNOWN_NAMES.get(lower, name)


def _key(name: str) -> str:
    return canonical_name(name).lower()


class Headers:
    """SIP header fields: case-insensitive names, original order kept, each name possibly repeated.

    Names are stored canonically (`v` becomes `Via`, `call-id` becomes `Call-ID`); unknown names keep their
    spelling. `get` returns the first value, `get_all` every field's value, `get_list` every comma-separated
    element across all fields (for Via, Route, Allow, Supported, ...).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = []  # (lower-case key, name, value)
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append one field; raises ValueError on a CR or LF in the value (header injection)."""
        if "\r" in value or "\n" in value or not name.strip():
            raise ValueError(f"invalid header field {name!r}")
        canonical = canonical_name(name)
        self._items.append((canonical.lower(), canonical, value.strip()))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        key = _key(name)
        for item_key, _, value in self._items:
            if item_key == key:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every field's value for `name`, in order."""
        key = _key(name)
        return [value for item_key, _, value in self._items if item_key == key]

    def get_list(self, name: str) -> list[str]:
        """Every comma-separated element of every `name` field, in order (quotes and <...> respected)."""
        return [part for value in self.get_all(name) for part in split_commas(value)]

    def set(self, name: str, value: str) -> None:
        """Replace every `name` field by one, at the first one's place (appended if there was none)."""
        self.add(name, value)
        new = self._items.pop()
        key = new[0]
        # Every field before the first match is kept, so that index is still right after the removal.
        index = next((i for i, item in enumerate(self._items) if item[0] == key), len(self._items))
        self._items = [item for item in self._items if item[0] != key]
        self._items.insert(index, new)

    def remove(self, name: str) -> None:
        """Drop every `name` field."""
        key = _key(name)
        self._items = [item for item in self._items if item[0] != key]

    def copy(self) -> Headers:
        """An independent copy."""
        duplicate = Headers()
        duplicate._items = list(self._items)
        return duplicate

    def items(self) -> list[tuple[str, str]]:
        """(name, value) pairs in order."""
        return [(name, value) for _, name, value in self._items]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


# --- small lexical helpers ------------------------------------------------------------------------------


def _scan(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes (with backslash escapes) and angle brackets."""
    if '"' not in text and "<" not in text:
        return text.split(separator)
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif char == separator and not angle:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def split_commas(value: str) -> list[str]:
    """The comma-separated elements of a list-valued header (empty elements dropped)."""
    return [part.strip() for part in _scan(value, ",") if part.strip()]


def unquote(value: str) -> str:
    """A quoted-string's content with its escapes undone; anything else stripped and returned as it is."""
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """`;a=1;b;c="x"` -> (("a", "1"), ("b", None), ("c", '"x"')). Values stay raw (quotes kept)."""
    params: list[tuple[str, str | None]] = []
    for part in _scan(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not _TOKEN_RE.fullmatch(name):
            raise SipParseError("bad parameter")
        params.append((name, value.strip() if eq else None))
    return tuple(params)


def _format_params(params: Iterable[tuple[str, str | None]]) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params)


def _find_param(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    """The parameter's value ("" for a flag), or None when absent. Names are case-insensitive."""
    key = name.lower()
    for param_name, value in params:
        if param_name.lower() == key:
            return "" if value is None else value
    return None


def _replace_param(
    params: tuple[tuple[str, str | None], ...], name: str, value: str | None
) -> tuple[tuple[str, str | None], ...]:
    key = name.lower()
    if any(n.lower() == key for n, _ in params):
        return tuple((n, value) if n.lower() == key else (n, v) for n, v in params)
    return (*params, (name, value))


def bare_host(host: str) -> str:
    """`[::1]` -> `::1`: an IPv6 reference as a socket address wants it."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _parse_port(text: str) -> int:
    if not _DIGITS.fullmatch(text) or len(text) > 5 or int(text) > 65535:
        raise SipParseError("bad port")
    return int(text)


def _split_hostport(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`; raises SipParseError on anything else."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise SipParseError("bad host")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = text.partition(":")
        port_text = port_text_raw if colon else None
    if not _HOST.fullmatch(host):
        raise SipParseError("bad host")
    return host, None if port_text is None else _parse_port(port_text)


# --- URIs, name-addrs, Vias ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SipUri:
    """A sip:, sips: or tel: URI (RFC 3261 19.1, RFC 3966). `str()` gives the URI back.

    For tel: URIs the number is in `user` and `host` is empty. Parameters and headers keep their order and
    their raw (escaped) text; a flag parameter has the value None.
    """

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse a URI; raises SipParseError when it is not a well-formed sip/sips/tel URI."""
        match = _SCHEME.fullmatch(text.strip())
        if match is None:
            raise SipParseError("bad URI")
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme == "tel":
            number, _, param_text = rest.partition(";")
            if not number or not re.fullmatch(r"[0-9A-Fa-f+*#\-.()pPwW]+", number):
                raise SipParseError("bad tel URI")
            return cls("tel", number, "", None, parse_params(param_text))
        if scheme not in ("sip", "sips"):
            raise SipParseError("unsupported URI scheme")
        return cls._parse_sip(scheme, rest)

    @classmethod
    def _parse_sip(cls, scheme: str, rest: str) -> SipUri:
        rest, question, header_text = rest.partition("?")
        user: str | None = None
        password: str | None = None
        at = rest.rfind("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, colon, password_text = userinfo.partition(":")
            password = password_text if colon else None
            if not user:
                raise SipParseError("bad URI user")
        hostport, _, param_text = rest.partition(";")
        host, port = _split_hostport(hostport)
        headers: list[tuple[str, str]] = []
        if question:
            for pair in header_text.split("&"):
                name, _, value = pair.partition("=")
                if not name:
                    raise SipParseError("bad URI header")
                headers.append((name, value))
        return cls(scheme, user, host, port, parse_params(param_text), tuple(headers), password)

    def param(self, name: str) -> str | None:
        """The URI parameter's value ("" for a flag like `lr`), or None when absent."""
        return _find_param(self.params, name)

    @property
    def transport(self) -> str | None:
        """The `transport` parameter, lower-cased, if any."""
        value = self.param("transport")
        return value.lower() if value else None

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{_format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user if self.password is None else f"{self.user}:{self.password}"
            userinfo += "@"
        port = "" if self.port is None else f":{self.port}"
        headers = "&".join(f"{n}={v}" for n, v in self.headers)
        return (
            f"{self.scheme}:{userinfo}{self.host}{port}{_format_params(self.params)}"
            f"{'?' + headers if headers else ''}"
        )


@dataclass(frozen=True, slots=True)
class NameAddr:
    """`"Display" <uri>;param=value` as in From, To, Contact, Route, Record-Route (RFC 3261 20.10)."""

    uri: SipUri
    display: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Parse a name-addr or an addr-spec; raises SipParseError when malformed."""
        text = text.strip()
        display: str | None = None
        if "<" in text:
            before, _, after = text.partition("<")
            if before.count('"') % 2:  # the "<" was inside the quoted display name
                end = _closing_quote(text)
                before, after = text[:end], text[end:]
                if "<" not in after:
                    raise SipParseError("bad name-addr")
                between, _, after = after.partition("<")
                if between.strip():
                    raise SipParseError("bad name-addr")
            uri_text, close, param_text = after.partition(">")
            if not close:
                raise SipParseError("unclosed <")
            display = unquote(before) or None
        else:
            start = text.rfind("@") + 1
            semicolon = text.find(";", start)
            uri_text, param_text = (text, "") if semicolon < 0 else (text[:semicolon], text[semicolon:])
        param_text = param_text.strip()
        if param_text and not param_text.startswith(";"):
            raise SipParseError("bad name-addr parameters")
        return cls(SipUri.parse(uri_text), display, parse_params(param_text))

    def param(self, name: str) -> str | None:
        """The header parameter's value ("" for a flag), or None when absent."""
        return _find_param(self.params, name)

    @property
    def tag(self) -> str | None:
        """The `tag` parameter (From/To), or None."""
        return self.param("tag")

    def with_param(self, name: str, value: str | None) -> NameAddr:
        """A copy with the parameter set (replaced, or appended)."""
        return replace(self, params=_replace_param(self.params, name, value))

    def __str__(self) -> str:
        display = ""
        if self.display is not None:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def _closing_quote(text: str) -> int:
    """Index just past the quoted string that starts at the first double quote of `text`."""
    start = text.index('"')
    escaped = False
    for i in range(start + 1, len(text)):
        if escaped:
            escaped = False
        elif text[i] == "\\":
            escaped = True
        elif text[i] == '"':
            return i + 1
    raise SipParseError("unclosed quote")


@dataclass(frozen=True, slots=True)
class Via:
    """One Via element (RFC 3261 20.42): `SIP/2.0/UDP host:port;branch=...;rport`."""

    transport: str  # upper case, as sent: UDP, TCP, TLS, WS, ...
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    protocol: str = SIP_VERSION

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one via-parm (split a comma-separated Via with `Headers.get_list` first)."""
        text = text.strip()
        match = _SENT_PROTOCOL.match(text)
        if match is None:
            raise SipParseError("bad Via")
        rest = text[match.end() :]
        if not rest[:1].isspace():
            raise SipParseError("bad Via")
        sent_by, _, param_text = rest.strip().partition(";")
        host, port = _split_hostport(sent_by)
        protocol = f"{match.group(1).upper()}/{match.group(2)}"
        return cls(match.group(3).upper(), host, port, parse_params(param_text), protocol)

    def param(self, name: str) -> str | None:
        """The parameter's value ("" for a flag), or None when absent."""
        return _find_param(self.params, name)

    @property
    def branch(self) -> str | None:
        """The branch parameter, or None (an RFC 2543 peer)."""
        return self.param("branch")

    @property
    def received(self) -> str | None:
        """The `received` parameter (RFC 3261 18.2.1), or None."""
        return self.param("received")

    @property
    def rport(self) -> str | None:
        """None without `rport`; "" when the client asked for it (RFC 3581); the port once filled."""
        return self.param("rport")

    def with_param(self, name: str, value: str | None) -> Via:
        """A copy with the parameter set (replaced in place, or appended)."""
        return replace(self, params=_replace_param(self.params, name, value))

    def stamped(self, source_host: str, source_port: int) -> Via:
        """The Via as a server forwards it in its response (RFC 3261 18.2.1, RFC 3581 4).

        `received` is added when the sent-by host is not the address the request came from, and always
        when the client asked for `rport`, whose value becomes the source port.
        """
        via = self
        if self.rport is not None:
            via = via.with_param("received", source_host).with_param("rport", str(source_port))
        elif bare_host(self.host) != source_host:
            via = via.with_param("received", source_host)
        return via

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"


def new_branch(rng: random.Random) -> str:
    """A fresh RFC 3261 branch (`z9hG4bK` + 64 random bits in hex)."""
    return f"{BRANCH_COOKIE}{rng.getrandbits(64):016x}"


def new_tag(rng: random.Random) -> str:
    """A fresh From/To tag (64 random bits in hex)."""
    return f"{rng.getrandbits(64):016x}"


def new_call_id(rng: random.Random, host: str) -> str:
    """A fresh Call-ID (`<128 random bits in hex>@host`)."""
    return f"{rng.getrandbits(128):032x}@{host}"


# --- messages -------------------------------------------------------------------------------------------


class SipMessage:
    """What requests and responses share: headers, body, and typed views of the mandatory headers."""

    __slots__ = ()
    headers: Headers
    body: bytes

    def _start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """Canonical bytes: CRLF line ends, full header names, Content-Length equal to the body's size."""
        headers = self.headers.copy()
        headers.set("Content-Length", str(len(self.body)))
        lines = [self._start_line(), *(f"{name}: {value}" for name, value in headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    @property
    def call_id(self) -> str:
        """The Call-ID."""
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) from CSeq; raises SipParseError if it is malformed."""
        match = _CSEQ.fullmatch(self.headers.get("CSeq") or "")
        if match is None:
            raise SipParseError("bad CSeq header")
        return int(match.group(1)), match.group(2)

    @property
    def from_(self) -> NameAddr:
        """From as a NameAddr (raises SipParseError if malformed)."""
        return NameAddr.parse(self.headers.get("From") or "")

    @property
    def to(self) -> NameAddr:
        """To as a NameAddr (raises SipParseError if malformed)."""
        return NameAddr.parse(self.headers.get("To") or "")

    @property
    def vias(self) -> list[Via]:
        """Every Via element, topmost first (raises SipParseError if one is malformed)."""
        return [Via.parse(value) for value in self.headers.get_list("Via")]

    @property
    def content_type(self) -> str | None:
        """The media type of Content-Type, lower-cased, without parameters (None when absent)."""
        value = self.headers.get("Content-Type")
        return None if value is None else value.partition(";")[0].strip().lower()


@dataclass(slots=True)
class SipRequest(SipMessage):
    """A SIP request. `uri` is the Request-URI as text (`SipUri.parse(uri)` for its parts)."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"


@dataclass(slots=True)
class SipResponse(SipMessage):
    """A SIP response."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"


def parse(data: bytes) -> SipRequest | SipResponse:
    """Parse one whole message; raises SipParseError (and nothing else) when it is malformed.

    Leading CRLFs are skipped (RFC 3261 7.5). A body longer than Content-Length is cut to it (a datagram's
    padding, RFC 3261 18.3); a shorter one is an error. Without Content-Length, the body is the rest.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError(f"message larger than {MAX_MESSAGE_SIZE} bytes", 513)
    data = data.lstrip(b"\r\n")
    end = _HEAD_END.search(data)
    head, body = (data, b"") if end is None else (data[: end.start()], data[end.end() :])
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header section is not UTF-8") from None
    message = _parse_head(text, body)
    try:
        if end is None:
            raise SipParseError("no empty line after the headers")
        _check(message)
    except SipParseError as error:
        raise SipParseError(error.reason, error.status, message) from None
    return message


def _parse_head(text: str, body: bytes) -> SipRequest | SipResponse:
    lines = text.replace("\r\n", "\n").split("\n")
    start, header_lines = lines[0], lines[1:]
    headers = Headers()
    for line in _unfold(header_lines):
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _TOKEN_RE.fullmatch(name) or "\r" in value:
            raise SipParseError("bad header line")
        headers.add(name, value)
    request = _REQUEST_LINE.fullmatch(start)
    if request is not None:
        uri = request.group(2)
        if _SCHEME.fullmatch(uri) is None:
            raise SipParseError("bad Request-URI")
        return SipRequest(request.group(1), uri, headers, body)
    status = _STATUS_LINE.fullmatch(start)
    if status is not None:
        return SipResponse(int(status.group(2)), status.group(3) or "", headers, body)
    raise SipParseError("bad start line")


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines (starting with a space or tab) to the line before, with one space."""
    unfolded: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not unfolded:
                raise SipParseError("continuation line before any header")
            unfolded[-1] = unfolded[-1].rstrip(" \t") + " " + line.strip(" \t")
        elif line:
            unfolded.append(line)
    return unfolded


def _check(message: SipRequest | SipResponse) -> None:
    headers = message.headers
    counts = collections.Counter(key for key, _, _ in headers._items)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if not counts[name.lower()]:
            raise SipParseError(f"missing {name} header")
    for name in _SINGLETONS:
        if counts[name.lower()] > 1:
            raise SipParseError(f"more than one {name} header")
    if not message.vias:
        raise SipParseError("missing Via header")
    message.from_  # noqa: B018  (parsed for validation)
    message.to  # noqa: B018
    if not message.call_id or _SPACE.search(message.call_id):
        raise SipParseError("bad Call-ID header")
    number, method = message.cseq
    if number >= 2**31:
        raise SipParseError("bad CSeq header")
    if isinstance(message, SipRequest):
        if method != message.method:
            raise SipParseError("CSeq method does not match the request")
        if message.uri.lower().startswith(("sip:", "sips:", "tel:")):
            SipUri.parse(message.uri)
    max_forwards = headers.get("Max-Forwards")
    if max_forwards is not None and (not _DIGITS.fullmatch(max_forwards) or int(max_forwards) > 255):
        raise SipParseError("bad Max-Forwards header")
    _check_body(message)


def _check_body(message: SipRequest | SipResponse) -> None:
    length_text = message.headers.get("Content-Length")
    if length_text is not None:
        if not _DIGITS.fullmatch(length_text) or len(length_text) > 6:
            raise SipParseError("bad Content-Length header")
        length = int(length_text)
        if len(message.body) < length:
            raise SipParseError(f"body has {len(message.body)} bytes, Content-Length says {length}")
        message.body = message.body[:length]
    if message.body and "Content-Type" not in message.headers:
        raise SipParseError("body without Content-Type")


# --- stream framing -------------------------------------------------------------------------------------

_CONTENT_LENGTH: Final = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*\r?$", re.I | re.M)
_START_LINE: Final = re.compile(
    rb"(?:[A-Za-z0-9\-.!%*_+`'~]+ \S+ SIP/2\.0|SIP/2\.0 [1-6][0-9][0-9]( [^\r\n]*)?)\r?", re.I
)


class StreamFramer:
    """Cuts a TCP/TLS byte stream into whole SIP messages (RFC 3261 18.3: by Content-Length).

    `feed` returns the complete messages the bytes finished, each ready for `parse`. CRLFs between messages
    (RFC 5626 keep-alives) are skipped; `take_pings()` says how many double-CRLF pings arrived, each owed a
    single CRLF pong. Garbage, a missing Content-Length or a message over `max_size` raise SipParseError:
    the transport must then close the connection (the framer stays broken and raises again).
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        self._newlines = 0
        self._pings = 0
        self._error: SipParseError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished message held back."""
        return len(self._buffer)

    def take_pings(self) -> int:
        """How many CRLFCRLF keep-alive pings arrived since the last call (answer each with one CRLF)."""
        pings, self._pings = self._pings, 0
        return pings

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every message now complete, in order."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        messages: list[bytes] = []
        try:
            while (message := self._next()) is not None:
                messages.append(message)
        except SipParseError as error:
            self._error = error
            self._buffer.clear()
            raise
        return messages

    def _next(self) -> bytes | None:
        self._skip_keepalives()
        if not self._buffer:
            return None
        line_end = self._buffer.find(b"\n")
        if line_end >= 0 and not _START_LINE.fullmatch(self._buffer[:line_end]):
            raise SipParseError("garbage on the stream")
        end = _HEAD_END.search(self._buffer)
        if end is None:
            if len(self._buffer) > self._max_size or (line_end < 0 and len(self._buffer) > 8192):
                raise SipParseError("message too large", 513)
            return None
        lengths = {m.group(1) for m in _CONTENT_LENGTH.finditer(self._buffer[: end.start()])}
        if not lengths:
            raise SipParseError("no Content-Length on a stream transport")
        length = lengths.pop()
        if lengths or not _DIGITS.fullmatch(length.decode("latin-1")) or len(length) > 12:
            raise SipParseError("bad Content-Length header")
        total = end.end() + int(length)
        if total > self._max_size:
            raise SipParseError("message too large", 513)
        if len(self._buffer) < total:
            return None
        message = bytes(self._buffer[:total])
        del self._buffer[:total]
        self._newlines = 0
        return message

    def _skip_keepalives(self) -> None:
        skipped = len(self._buffer) - len(self._buffer.lstrip(b"\r\n"))
        if skipped:
            self._newlines += self._buffer[:skipped].count(b"\n")
            del self._buffer[:skipped]
            self._pings += self._newlines // 2
            self._newlines %= 2
