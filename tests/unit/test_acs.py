"""ACS Call Automation, sans-I/O: the media dialect, Event Grid and callbacks, the answer plan, the JWTs.

Message shapes are those of Microsoft's documentation (audio-streaming quickstart, Event Grid's
IncomingCall, Call Automation's CloudEvents, the secure-webhook page); the JWTs are made here the way
that page describes ACS's (RS256, issuer and keys from the OpenID configuration, aud = resource id).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from typing import Any

import jwt
import pytest
from azure.communication.callautomation import MediaStreamingOptions
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import LocalProtocolError
from gateway.telephony import acs
from gateway.telephony.acs import (
    AcsDialect,
    AcsOptions,
    CallbackEvent,
    IncomingCall,
    JwtRejected,
    OtherGridEvent,
    StreamState,
    SubscriptionValidation,
    answer_plan,
    callback_label,
    check_jwt,
    dialect_for,
    keys_stale,
    parse_callbacks,
    parse_connection_string,
    parse_event_grid,
    parse_openid_configuration,
    parse_signing_keys,
    validation_response,
)
from gateway.telephony.events import (
    CallStarted,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    ProtocolViolation,
)
from gateway.telephony.provider import HttpRequest, Refusal
from gateway.telephony.providers import PROVIDERS
from telcodec import Encoding, WireFormat

PCM = bytes(range(256)) * 3 + bytes(192)  # 960 bytes: 20 ms at 24 kHz


def metadata(rate: int = 24000, **overrides: Any) -> str:
    """An AudioMetadata message as the quickstart shows it (its example is at 16 kHz)."""
    meta = {
        "subscriptionId": "89e8cb59-b991-48b0-b154-1db84f16a077",
        "encoding": "PCM",
        "sampleRate": rate,
        "channels": 1,
        "length": rate // 50 * 2,
        **overrides,
    }
    return json.dumps({"kind": "AudioMetadata", "audioMetadata": meta})


def audio(payload: bytes, *, silent: bool = False) -> str:
    """An AudioData message as the quickstart shows it."""
    return json.dumps(
        {
            "kind": "AudioData",
            "audioData": {
                "timestamp": "2024-11-15T19:16:12.925Z",
                "participantRawID": "8:acs:3d20e1de-0f28-41c5-84b0-0000000000",
                "data": base64.b64encode(payload).decode(),
                "silent": silent,
            },
        }
    )


def dtmf(data: str) -> str:
    """A DtmfData message as the quickstart shows it."""
    return json.dumps({"kind": "DtmfData", "dtmfData": {"data": data}})


def started(rate: int = 24000) -> AcsDialect:
    """A dialect past its AudioMetadata, opened by an upgrade that named the call."""
    dialect = AcsDialect(call_connection_id="conn-1", correlation_id="corr-1")
    assert isinstance(dialect.receive_text(metadata(rate)), CallStarted)
    return dialect


TRANSCRIPT = [metadata(), audio(PCM), audio(PCM), dtmf("3"), audio(b"", silent=True), audio(PCM)]


def _expected_events() -> list[object]:
    fmt = WireFormat(Encoding.L16, 24000)
    return [
        CallStarted(
            stream_id="89e8cb59-b991-48b0-b154-1db84f16a077",
            call_id="conn-1",
            account_id="",
            tracks=("inbound",),
            custom_parameters={"correlationId": "corr-1"},
            encoding="PCM",
            sample_rate=24000,
            channels=1,
            format=fmt,
        ),
        MediaReceived(payload=PCM, timestamp_ms=0, chunk=0),
        MediaReceived(payload=PCM, timestamp_ms=20, chunk=1),
        DtmfReceived("3"),
        MediaReceived(payload=bytes(960), timestamp_ms=40, chunk=2),
        MediaReceived(payload=PCM, timestamp_ms=60, chunk=3),
    ]


# -- the media dialect ---------------------------------------------------------------------------------


def test_transcript_gives_the_documented_events() -> None:
    """A recorded stream (metadata, audio, DTMF, a silent frame) gives CallStarted with the header's call
    id, the media in order on a 20 ms clock, and the key."""
    dialect = AcsDialect(call_connection_id="conn-1", correlation_id="corr-1")
    assert [dialect.receive_text(text) for text in TRANSCRIPT] == _expected_events()
    assert dialect.state is StreamState.STREAMING


def test_binary_frames_carry_the_same_json() -> None:
    """The same transcript in UTF-8 binary frames (the SDKs' parsers accept bytes) gives the same events."""
    dialect = AcsDialect(call_connection_id="conn-1", correlation_id="corr-1")
    assert [dialect.receive_bytes(text.encode()) for text in TRANSCRIPT] == _expected_events()


def test_dialect_for_reads_the_call_from_the_upgrade_headers() -> None:
    """The upgrade's x-ms-call-connection-id becomes the call id, its correlation id a parameter."""
    request = HttpRequest(
        "GET",
        "wss://gw.example.com/acs/media",
        {"x-ms-call-connection-id": "421f0b00-aaaa", "x-ms-call-correlation-id": "9f2c-corr"},
    )
    call = dialect_for(request).receive_text(metadata())
    assert isinstance(call, CallStarted)
    assert call.call_id == "421f0b00-aaaa"
    assert call.custom_parameters == {"correlationId": "9f2c-corr"}


def test_dialect_for_reads_the_numbers_our_answer_put_in_the_stream_url() -> None:
    """answer_plan's `?to=&from=` comes back on the upgrade: To and From, as the other providers name
    them, so BOTS_FILE picks the dialed number's bot for ACS calls too."""
    plan = answer_plan(IncomingCall("ctx", "corr", "s", "4:+14255550123", "4:+14255550100"), "https://gw")
    request = HttpRequest("GET", plan.media_streaming.transport_url, {"x-ms-call-connection-id": "c1"})
    call = dialect_for(request).receive_text(metadata())
    assert isinstance(call, CallStarted)
    assert call.custom_parameters == {"From": "+14255550123", "To": "+14255550100"}


@pytest.mark.parametrize(
    ("rate", "overrides"),
    [
        (24000, {}),
        (16000, {}),  # the quickstart's example and ACS's default
        (24000, {"encoding": "pcm"}),
        (24000, {"channels": None}),
        (16000, {"length": None}),
        (24000, {"subscriptionId": None}),
    ],
)
def test_every_known_metadata_variant_sets_the_format(rate: int, overrides: dict[str, Any]) -> None:
    """Each AudioMetadata shape sets the leg's format from its own sample rate (L16 mono)."""
    meta = {k: v for k, v in overrides.items() if v is not None}
    text = metadata(rate, **meta)
    doc = json.loads(text)
    for key in [k for k, v in overrides.items() if v is None]:
        del doc["audioMetadata"][key]
    event = AcsDialect("c").receive_text(json.dumps(doc))
    assert isinstance(event, CallStarted)
    assert event.format == WireFormat(Encoding.L16, rate)
    assert event.sample_rate == rate
    assert event.stream_id in ("89e8cb59-b991-48b0-b154-1db84f16a077", "c")


@pytest.mark.parametrize(
    "overrides",
    [
        {"sampleRate": 44100},
        {"sampleRate": 48000},
        {"channels": 2},
        {"encoding": "OPUS"},
        {"sampleRate": "24000"},
        {"sampleRate": 0},
    ],
)
def test_unsupported_metadata_is_refused_naming_what_is_supported(overrides: dict[str, Any]) -> None:
    """A format telcodec cannot carry as mono L16 ends the stream, and the reason names the supported ones."""
    event = AcsDialect().receive_text(metadata(**overrides))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    assert "16000" in event.reason or "positive integer" in event.reason


def test_a_silent_frame_without_data_is_a_frame_of_silence() -> None:
    """A `silent` AudioData with no samples still takes its 20 ms (metadata `length` bytes of zeros)."""
    dialect = started(16000)
    event = dialect.receive_text(audio(b"", silent=True))
    assert event == MediaReceived(payload=bytes(640), timestamp_ms=0, chunk=0)


def test_media_before_metadata_is_fatal() -> None:
    """AudioData or DtmfData before AudioMetadata leaves the format unknown: the stream ends."""
    for text in (audio(PCM), dtmf("1")):
        event = AcsDialect().receive_text(text)
        assert isinstance(event, ProtocolViolation)
        assert event.fatal


def test_repeated_metadata_is_dropped_but_a_format_change_is_fatal() -> None:
    """The same AudioMetadata again is dropped; one announcing another rate ends the stream."""
    dialect = started()
    again = dialect.receive_text(metadata())
    assert isinstance(again, ProtocolViolation)
    assert not again.fatal
    changed = dialect.receive_text(metadata(16000))
    assert isinstance(changed, ProtocolViolation)
    assert changed.fatal


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"kind": "TranscriptionData", "transcriptionData": {}}),
        json.dumps({"audioData": {}}),
        json.dumps({"kind": 7}),
        json.dumps({"kind": "AudioData", "audioData": {"data": "!!not base64!!"}}),
        json.dumps({"kind": "AudioData", "audioData": {"data": base64.b64encode(b"odd").decode()}}),
        json.dumps({"kind": "AudioData", "audioData": {"data": ""}}),
        json.dumps({"kind": "AudioData", "audioData": "flat"}),
        json.dumps({"kind": "DtmfData", "dtmfData": {"data": ""}}),
        json.dumps({"kind": "DtmfData"}),
    ],
)
def test_bad_messages_after_metadata_are_dropped_not_fatal(text: str) -> None:
    """Unknown kinds and malformed fields in one message are violations that do not end the call."""
    event = started().receive_text(text)
    assert isinstance(event, ProtocolViolation)
    assert not event.fatal


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"AudioData"', "null"])
def test_text_that_is_not_a_json_object_is_fatal(text: str) -> None:
    """A frame that is not a JSON object is not ACS: the stream ends."""
    event = started().receive_text(text)
    assert isinstance(event, ProtocolViolation)
    assert event.fatal


def test_binary_frame_that_is_not_utf8_is_fatal() -> None:
    """Bytes that are not UTF-8 JSON end the stream."""
    event = started().receive_bytes(b"\xff\xfe\x00")
    assert isinstance(event, ProtocolViolation)
    assert event.fatal


def test_dtmf_tone_names_become_keys() -> None:
    """A DtmfData naming the tone (Call Automation's DtmfTone spelling) gives the key itself."""
    dialect = started()
    assert dialect.receive_text(dtmf("pound")) == DtmfReceived("#")
    assert dialect.receive_text(dtmf("7")) == DtmfReceived("7")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_garbage_text_never_raises(text: str) -> None:
    """Arbitrary text, before or after the metadata, gives an event, never an exception."""
    for dialect in (AcsDialect(), started()):
        dialect.receive_text(text)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["AudioMetadata", "AudioData", "DtmfData", "audioData", "x"]),
    st.sampled_from(["audioMetadata", "audioData", "dtmfData"]),
    _JSON,
)
def test_garbage_fields_never_raise(kind: str, key: str, body: object) -> None:
    """Messages of every kind with arbitrary field values give events, never exceptions."""
    text = json.dumps({"kind": kind, key: body})
    for dialect in (AcsDialect(), started()):
        dialect.receive_text(text)
        dialect.receive_bytes(text.encode())


def test_send_audio_is_exactly_the_documented_json() -> None:
    """PlayAudio is one text frame, byte for byte the Python quickstart's AudioData (PascalCase)."""
    frames = started().send(PlayAudio(b"\x01\x00\x02\x00", end_position=2))
    assert frames == ('{"Kind":"AudioData","AudioData":{"Data":"AQACAA=="},"StopAudio":null}',)
    assert json.loads(frames[0]) == {
        "Kind": "AudioData",
        "AudioData": {"Data": "AQACAA=="},
        "StopAudio": None,
    }


def test_clear_is_exactly_the_documented_stop_audio() -> None:
    """ClearPlayback is the Python quickstart's StopAudio message."""
    frames = started().send(ClearPlayback())
    assert frames == ('{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}',)
    assert json.loads(frames[0]) == {"Kind": "StopAudio", "AudioData": None, "StopAudio": {}}


def test_no_playback_confirmation_round_trip() -> None:
    """ACS confirms nothing: PlayAudio asks for no confirmation and nothing ACS sends becomes PlayedTo."""
    dialect = started()
    assert len(dialect.send(PlayAudio(PCM, end_position=480))) == 1
    events = [dialect.receive_text(text) for text in TRANSCRIPT[1:]]
    assert not [e for e in events if isinstance(e, PlayedTo)]


def test_send_before_metadata_or_half_samples_is_our_bug() -> None:
    """Sending before the stream started, or a payload of half a sample, raises LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        AcsDialect().send(ClearPlayback())
    with pytest.raises(LocalProtocolError):
        started().send(PlayAudio(b"\x00\x01\x02", end_position=1))


def test_provider_is_registered_without_a_shared_secret() -> None:
    """The provider serves /acs/media with its dialect; ACS's JWT, not a stream token, guards it."""
    provider = PROVIDERS["acs"]
    assert provider is acs.PROVIDER
    assert provider.secret_setting is None
    assert provider.answer is None
    assert isinstance(provider.dialect(), AcsDialect)
    assert provider.dialect().playout.multiple_bytes == 2


# -- Event Grid and the answer --------------------------------------------------------------------------

TOPIC = "/subscriptions/xx/resourceGroups/rg/providers/Microsoft.Communication/communicationServices/a"
VALIDATION = [
    {
        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
        "topic": TOPIC,
        "subject": "",
        "data": {
            "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
            "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/x/validate?id=1",
        },
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2018-01-25T22:12:19.4556811Z",
        "metadataVersion": "1",
        "dataVersion": "1",
    }
]

INCOMING_CALL = [
    {
        "id": "6f0e1a1c-0000-0000-0000-000000000000",
        "topic": TOPIC,
        "subject": "/phonenumber/14255550100",
        "data": {
            "to": {
                "kind": "phoneNumber",
                "rawId": "4:+14255550100",
                "phoneNumber": {"value": "+14255550100"},
            },
            "from": {
                "kind": "phoneNumber",
                "rawId": "4:+14255550123",
                "phoneNumber": {"value": "+14255550123"},
            },
            "serverCallId": "aHR0cHM6Ly9jb252LXVzd2UtMDgu",
            "callerDisplayName": "",
            "incomingCallContext": "eyJhbGciOiJub25lIn0.eyJjYyI6IkgzNHNJQUFBIn0.",
            "correlationId": "d3b0c2a1-1111-2222-3333-444455556666",
        },
        "eventType": "Microsoft.Communication.IncomingCall",
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": "2024-11-15T19:16:10.1234567Z",
    }
]


def test_subscription_validation_is_answered_with_its_code() -> None:
    """Event Grid's handshake parses to its code, and the reply is {"validationResponse": code}."""
    events = parse_event_grid(json.dumps(VALIDATION).encode())
    assert events == (SubscriptionValidation("512d38b6-c7b8-40c8-89fe-f46f9e9622b6"),)
    assert validation_response("512d38b6-c7b8-40c8-89fe-f46f9e9622b6") == {
        "validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    }


def test_incoming_call_parses_to_the_call_to_answer() -> None:
    """The IncomingCall event gives the signed context, the ids and the parties' raw ids."""
    events = parse_event_grid(json.dumps(INCOMING_CALL).encode())
    assert events == (
        IncomingCall(
            context="eyJhbGciOiJub25lIn0.eyJjYyI6IkgzNHNJQUFBIn0.",
            correlation_id="d3b0c2a1-1111-2222-3333-444455556666",
            server_call_id="aHR0cHM6Ly9jb252LXVzd2UtMDgu",
            caller="4:+14255550123",
            callee="4:+14255550100",
        ),
    )


def test_cloudevents_schema_and_other_types_are_understood() -> None:
    """A CloudEvents subscription names the type `type`; an event this route ignores is recognised."""
    cloud = {"type": INCOMING_CALL[0]["eventType"], "data": INCOMING_CALL[0]["data"], "specversion": "1.0"}
    assert isinstance(parse_event_grid(json.dumps(cloud).encode()), tuple)
    other = [{"eventType": "Microsoft.Communication.CallEnded", "data": {}}]
    assert parse_event_grid(json.dumps(other).encode()) == (
        OtherGridEvent("Microsoft.Communication.CallEnded"),
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"[1]",
        json.dumps([{"eventType": "Microsoft.Communication.IncomingCall", "data": {}}]).encode(),
        json.dumps([{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}}]).encode(),
        json.dumps([{"data": {}}]).encode(),
    ],
)
def test_unusable_deliveries_are_refused_with_400(body: bytes) -> None:
    """A body that is no Event Grid delivery is a 400 with a reason, never an exception."""
    refused = parse_event_grid(body)
    assert isinstance(refused, Refusal)
    assert refused.status == 400


def test_answer_plan_streams_pcm24k_both_ways_to_the_public_host() -> None:
    """The answer sends callbacks to /acs/callbacks and streams mixed PCM 24 kHz, bidirectional, started
    at once, with DTMF, to wss://<public host>/acs/media."""
    call = IncomingCall("ctx", "corr", "server", "4:+1", "4:+2")
    plan = answer_plan(call, "https://gw.example.com")
    assert plan.incoming_call_context == "ctx"
    assert plan.callback_url == "https://gw.example.com/acs/callbacks"
    assert asdict(plan.media_streaming) == {
        "transport_url": "wss://gw.example.com/acs/media?to=%2B2&from=%2B1",
        "transport_type": "websocket",
        "content_type": "audio",
        "audio_channel_type": "mixed",
        "start_media_streaming": True,
        "enable_bidirectional": True,
        "audio_format": "pcm24KMono",
        "enable_dtmf_tones": True,
    }
    assert answer_plan(call, "http://127.0.0.1:8080").media_streaming.transport_url == (
        "wss://127.0.0.1:8080/acs/media?to=%2B2&from=%2B1"
    )
    unnamed = IncomingCall("ctx", "corr", "server", "", "8:acs:user")  # an ACS user, no caller
    assert answer_plan(unnamed, "https://gw.example.com").media_streaming.transport_url == (
        "wss://gw.example.com/acs/media?to=8%3Aacs%3Auser"
    )


def test_answer_plan_serializes_to_the_rest_api_names() -> None:
    """The SDK's MediaStreamingOptions built from the plan serialize to answerCall's REST JSON."""
    plan = answer_plan(IncomingCall("ctx", "corr", "s", "", ""), "https://gw.example.com")
    options = MediaStreamingOptions(**asdict(plan.media_streaming))
    assert options._to_generated().serialize() == {
        "transportUrl": "wss://gw.example.com/acs/media",
        "transportType": "websocket",
        "contentType": "audio",
        "audioChannelType": "mixed",
        "startMediaStreaming": True,
        "enableBidirectional": True,
        "audioFormat": "pcm24KMono",
        "enableDtmfTones": True,
    }


# -- callbacks ---------------------------------------------------------------------------------------

CALLBACKS = [
    {
        "id": "b5d7f9a0-0000-0000-0000-000000000001",
        "source": "calling/callConnections/421f0b00-aaaa",
        "type": "Microsoft.Communication.CallConnected",
        "data": {
            "version": "2024-09-15",
            "operationContext": "corr",
            "callConnectionId": "421f0b00-aaaa",
            "serverCallId": "aHR0cHM6Ly9jb252",
            "correlationId": "d3b0c2a1-1111",
            "publicEventType": "Microsoft.Communication.CallConnected",
        },
        "time": "2024-11-15T19:16:11.5Z",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": "calling/callConnections/421f0b00-aaaa",
    },
    {
        "id": "b5d7f9a0-0000-0000-0000-000000000002",
        "source": "calling/callConnections/421f0b00-aaaa",
        "type": "Microsoft.Communication.MediaStreamingFailed",
        "data": {
            "callConnectionId": "421f0b00-aaaa",
            "correlationId": "d3b0c2a1-1111",
            "resultInformation": {"code": 500, "subCode": 8581, "message": "Action failed, websocket error."},
            "mediaStreamingUpdate": {"mediaStreamingStatus": "mediaStreamingFailed"},
        },
        "specversion": "1.0",
    },
]


def test_callbacks_parse_to_their_types_and_calls() -> None:
    """Each CloudEvent gives its short type, the call connection, and a failure's code and message."""
    assert parse_callbacks(json.dumps(CALLBACKS).encode()) == (
        CallbackEvent("CallConnected", "421f0b00-aaaa", "d3b0c2a1-1111"),
        CallbackEvent(
            "MediaStreamingFailed",
            "421f0b00-aaaa",
            "d3b0c2a1-1111",
            "500 8581 Action failed, websocket error.",
        ),
    )


def test_callback_labels_are_bounded() -> None:
    """Known types are labels by name; anything else is "other", so the metric cannot grow unbounded."""
    assert callback_label("CallDisconnected") == "CallDisconnected"
    assert callback_label("MediaStreamingStopped") == "MediaStreamingStopped"
    assert callback_label("x" * 500) == "other"


@pytest.mark.parametrize("body", [b"{", b"[]", b'[{"type": 1, "data": {}}]', b'[{"type": "X"}]'])
def test_unusable_callbacks_are_refused_with_400(body: bytes) -> None:
    """A callback body that is no CloudEvents delivery is a 400, never an exception."""
    refused = parse_callbacks(body)
    assert isinstance(refused, Refusal)
    assert refused.status == 400


# -- settings values -------------------------------------------------------------------------------


def test_connection_string_gives_endpoint_and_key() -> None:
    """The portal's connection string splits into the https endpoint and the base64 access key."""
    key = base64.b64encode(b"k" * 32).decode()
    assert parse_connection_string(f"endpoint=https://acs-1.communication.azure.com/;accesskey={key}") == (
        "https://acs-1.communication.azure.com",
        key,
    )
    assert parse_connection_string(f"AccessKey={key};Endpoint=acs-1.communication.azure.com")[0] == (
        "https://acs-1.communication.azure.com"
    )


@pytest.mark.parametrize(
    "value", ["", "endpoint=https://x.communication.azure.com/", "accesskey=abc=", "endpoint=x;accesskey=!!"]
)
def test_bad_connection_strings_are_refused_without_echoing_the_key(value: str) -> None:
    """A connection string missing a part, or with a key that is not base64, is a ValueError naming the
    expected shape, not the value."""
    with pytest.raises(ValueError, match=r"endpoint=|base64") as raised:
        parse_connection_string(value)
    assert "!!" not in str(raised.value)


def test_options_know_when_calls_can_be_answered() -> None:
    """A connection string or an endpoint configures answering; the key is never in the repr."""
    assert not AcsOptions().configured
    assert AcsOptions(endpoint="https://x.communication.azure.com").configured
    assert "secret" not in repr(AcsOptions(connection_string="endpoint=x;accesskey=secret"))


# -- ACS's JWTs ----------------------------------------------------------------------------------------

ISSUER = "https://acscallautomation.communication.azure.com"
AUDIENCE = "0f4d5ab1-8f1c-4f6d-9b0b-2f3c4d5e6f70"
NOW = 1_750_000_000


@pytest.fixture(scope="module")
def signing() -> tuple[rsa.RSAPrivateKey, dict[str, jwt.PyJWK]]:
    """An RSA key pair, its public half published as a JWKS under kid "k1" and parsed as ACS's would be."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwks = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}
    return private, parse_signing_keys(json.dumps(jwks).encode())


def token(private: rsa.RSAPrivateKey, **claims: Any) -> str:
    """A JWT as ACS signs it (RS256, kid k1), with claims overridable (None removes one)."""
    kid = claims.pop("kid", "k1")
    body = {"iss": ISSUER, "aud": AUDIENCE, "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 290, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private, algorithm="RS256", headers={"kid": kid} if kid else None)


def verify(keys: dict[str, jwt.PyJWK], authorization: str | None, now: float = NOW) -> object:
    """check_jwt with the test's issuer and audience."""
    return check_jwt(authorization, keys, issuer=ISSUER, audience=AUDIENCE, now_s=now)


def test_a_valid_acs_token_gives_its_claims(signing: tuple[rsa.RSAPrivateKey, dict[str, jwt.PyJWK]]) -> None:
    """A bearer JWT signed by a published key, for our audience and ACS's issuer, in its lifetime, passes."""
    private, keys = signing
    claims = verify(keys, f"Bearer {token(private)}")
    assert isinstance(claims, dict)
    assert claims["aud"] == AUDIENCE


@pytest.mark.parametrize(
    ("claims", "now", "reason"),
    [
        ({"aud": "another-resource"}, NOW, "another audience"),
        ({"iss": "https://evil.example.com"}, NOW, "another issuer"),
        ({}, NOW + 290 + 61, "expired"),
        ({}, NOW - 10 - 61, "not yet valid"),
        ({"exp": None}, NOW, "invalid token"),
        ({"aud": None}, NOW, "invalid token"),
    ],
)
def test_tokens_for_others_or_out_of_time_are_rejected(
    signing: tuple[rsa.RSAPrivateKey, dict[str, jwt.PyJWK]], claims: dict[str, Any], now: int, reason: str
) -> None:
    """Another audience or issuer, expiry or nbf beyond the minute of skew, or a missing claim: refused."""
    private, keys = signing
    verdict = verify(keys, f"Bearer {token(private, **claims)}", now)
    assert isinstance(verdict, JwtRejected)
    assert reason in verdict.reason
    assert not verdict.unknown_key


def test_skew_within_a_minute_is_tolerated(signing: tuple[rsa.RSAPrivateKey, dict[str, jwt.PyJWK]]) -> None:
    """A token a few seconds past exp (clock skew) still passes."""
    private, keys = signing
    assert isinstance(verify(keys, f"Bearer {token(private)}", NOW + 290 + 30), dict)


def test_unknown_key_ids_ask_for_a_refetch(signing: tuple[rsa.RSAPrivateKey, dict[str, jwt.PyJWK]]) -> None:
    """A token naming a key id the JWKS lacks is refused with `unknown_key` (the keys may have rotated)."""
    private, keys = signing
    verdict = verify(keys, f"Bearer {token(private, kid='rotated')}")
    assert isinstance(verdict, JwtRejected)
    assert verdict.unknown_key


def test_forged_and_malformed_tokens_are_rejected(
    signing: tuple[rsa.RSAPrivateKey, dict[str, jwt.PyJWK]],
) -> None:
    """Another key's signature, an HS256 token, a tampered body, garbage, no header or no bearer: refused."""
    private, keys = signing
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = token(private)
    head, _body, sig = good.split(".")
    tampered = ".".join([head, base64.urlsafe_b64encode(b'{"aud":"x"}').decode().rstrip("="), sig])
    hs256 = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 60}, "k" * 32, headers={"kid": "k1"})
    for authorization in (
        f"Bearer {token(other)}",
        f"Bearer {hs256}",
        f"Bearer {tampered}",
        "Bearer not.a.jwt",
        None,
        "",
        f"Basic {good}",
        "Bearer ",
    ):
        verdict = verify(keys, authorization)
        assert isinstance(verdict, JwtRejected), authorization
        assert not verdict.unknown_key


def test_openid_configuration_and_jwks_parsing() -> None:
    """The configuration gives issuer and jwks_uri; documents without them, or with no usable key, fail."""
    doc = {
        "issuer": ISSUER,
        "jwks_uri": f"{ISSUER}/calling/keys",
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    config = parse_openid_configuration(json.dumps(doc).encode())
    assert (config.issuer, config.jwks_uri) == (ISSUER, f"{ISSUER}/calling/keys")
    for bad in (b"[]", b"{", json.dumps({"issuer": ISSUER}).encode()):
        with pytest.raises(ValueError, match="OpenID configuration"):
            parse_openid_configuration(bad)
    for bad in (b"{", b'{"keys": []}', b'{"keys": [{"kty": "nope"}]}'):
        with pytest.raises(ValueError, match="unusable JWKS"):
            parse_signing_keys(bad)


def test_keys_are_refetched_daily_or_on_an_unknown_key_at_most_once_a_minute() -> None:
    """Never fetched or a day old: fetch; an unknown key id: refetch only if the last fetch is a minute
    old."""
    assert keys_stale(None, 0.0)
    assert not keys_stale(100.0, 130.0)
    assert not keys_stale(100.0, 130.0, unknown_key=True)
    assert keys_stale(100.0, 160.0, unknown_key=True)
    assert keys_stale(100.0, 100.0 + 24 * 3600)
