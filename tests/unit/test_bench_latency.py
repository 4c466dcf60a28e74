"""The capacity bench's bot-direction layout for every provider format, against the gateway's own call core.

A `CallCore` (sans-I/O) is fed items of audio deltas as the realtime stub sends them; the media messages
it pulls for the leg are laid end to end. `LegLayout` must say, for every delta, which message holds its
first byte and whether that message had to wait for audio sent after the delta, and how many bytes each
item takes on the leg.
"""

from __future__ import annotations

import pytest

from bench.latency import ULAW_8K, Delta, LegLayout, bot_latencies, delta_first_byte
from bench.lean_provider import playout_rule
from gateway.call.audio import CallAudio
from gateway.call.core import CallConfig, CallCore
from gateway.loadtest.wires import PROVIDERS, make_wire
from gateway.realtime.events import AudioDelta, AudioDone, ResponseCreated
from gateway.realtime.session import AudioFormat
from gateway.telephony.events import PlayAudio, PlayoutRule
from telcodec import WireFormat

SESSION = {"pcm16": AudioFormat.PCM16, "g711": AudioFormat.G711_ULAW}
ITEMS_MS = (650, 300)  # the first item's rest fills no whole message: padded under a minimum
DELTA_MS = 50


def _cases() -> list[tuple[str, WireFormat, str]]:
    out = []
    for provider in PROVIDERS:
        for fmt in make_wire(provider, "x").formats:
            out += [(provider, fmt, mode) for mode in SESSION if mode == "pcm16" or fmt == ULAW_8K]
    return out


def _through_core(
    fmt: WireFormat, mode: str, rule: PlayoutRule
) -> tuple[list[Delta], list[float], list[int], int]:
    """Deltas (sent_at = their index), and the messages the core pulls: when (the index of the event
    after which it came out; an item's end is index + 0.5), where each starts, and the bytes in all."""
    session = SESSION[mode]
    core = CallCore(CallConfig(), session, fmt, rule)
    core.receive_realtime(ResponseCreated("resp"), 0)
    deltas: list[Delta] = []
    media_at: list[float] = []
    media_offset: list[int] = []
    total = 0

    def pull(at: float) -> None:
        nonlocal total
        while (command := core.next_leg_command(0)) is not None:
            assert isinstance(command, PlayAudio)
            media_at.append(at)
            media_offset.append(total)
            total += len(command.payload)

    item_offset = 0
    for number, item_ms in enumerate(ITEMS_MS):
        item = f"item{number}"
        for start in range(0, item_ms, DELTA_MS):
            audio = bytes(session.bytes_per_ms * DELTA_MS)
            core.receive_realtime(AudioDelta("resp", item, 0, audio), 0)
            deltas.append(Delta(float(len(deltas)), item_offset, start, DELTA_MS))
            pull(len(deltas) - 1)
        core.receive_realtime(AudioDone("resp", item), 0)
        pull(len(deltas) - 0.5)
        item_offset += item_ms
    return deltas, media_at, media_offset, total


@pytest.mark.parametrize(("provider", "fmt", "mode"), _cases(), ids=str)
def test_layout_predicts_where_the_core_puts_each_delta(provider: str, fmt: WireFormat, mode: str) -> None:
    """Every delta's first byte is in the message the layout predicts; a delta whose message needed later
    audio (a whole message under the provider's minimum, or the item's end) is the one the layout says
    waited, and items take `item_bytes` on the leg."""
    layout = LegLayout.of(fmt, mode, playout_rule(provider, fmt))
    deltas, media_at, media_offset, total = _through_core(fmt, mode, playout_rule(provider, fmt))
    assert total == sum(layout.item_bytes(ms) for ms in ITEMS_MS)
    match = bot_latencies(deltas, media_at, media_offset, layout, (-1.0, 1e9), media_end=total)
    assert (match.unmatched, len(match.latencies)) == (0, len(deltas))
    # 0: the message came out with the delta's own conversion; more: only after later events.
    assert [latency > 0 for latency in match.latencies] == [
        layout.waits(d.start_ms, d.size_ms) for d in deltas
    ]
    assert match.immediate == [0.0] * (len(deltas) - match.waited)


def test_exotel_waits_for_whole_3200_byte_messages() -> None:
    """Exotel's L16 8 kHz: 100 ms deltas give 1,600 bytes (the first 40 fewer: the resampler's delay), so a
    3,200-byte message goes out with every second delta and the delta before it waits; the item's last
    message waits for its end and is padded."""
    layout = LegLayout.of(WireFormat.of("l16", 8000), "pcm16", playout_rule("exotel"))
    assert (layout.bytes_per_ms, layout.holdback_bytes, layout.chunk_bytes, layout.min_bytes) == (
        16,
        40,
        3200,
        3200,
    )
    assert [layout.first_byte(ms) for ms in (0, 100, 200, 300)] == [0, 1560, 3160, 4760]
    assert [layout.waits(ms, 100) for ms in (0, 100, 200, 300, 400)] == [True, True, False, True, False]
    assert layout.item_bytes(2000) == 32000
    assert layout.item_bytes(650) == 3 * 3200 + 3200  # 800 bytes of rest padded to a whole message
    assert layout.caller_frame_lag == 1


def test_layout_of_twilio_is_the_original_mu_law_layout() -> None:
    """Twilio's layout gives the offsets `delta_first_byte` always gave, in both modes, and never waits."""
    for mode, hold in (("pcm16", 20), ("g711", 0)):
        layout = LegLayout.of(ULAW_8K, mode, playout_rule("twilio"))
        assert layout.holdback_bytes == hold
        assert layout.caller_frame_lag == (1 if mode == "pcm16" else 0)
        for start in (0, 100, 300):
            assert layout.first_byte(start) == delta_first_byte(0, start, hold)
            assert not layout.waits(start, 100)
        assert layout.item_bytes(2000) == 16000


def test_l16_24k_passes_through_without_holdback_or_caller_lag() -> None:
    """ACS's L16 24 kHz is the session's own format: no resampler delay either way."""
    layout = LegLayout.of(WireFormat.of("l16", 24000), "pcm16", playout_rule("acs"))
    assert (layout.holdback_bytes, layout.caller_frame_lag, layout.first_byte(100)) == (0, 0, 4800)


@pytest.mark.parametrize("fmt", [WireFormat.of("alaw", 8000), WireFormat.of("l16", 16000)], ids=str)
def test_g711_mode_refuses_what_the_gateway_refuses(fmt: WireFormat) -> None:
    """AUDIO_MODE=g711 carries mu-law 8 kHz only: the layout refuses other formats, as the call core does."""
    with pytest.raises(ValueError, match="g711"):
        LegLayout.of(fmt, "g711")
    with pytest.raises(ValueError, match="g711"):
        CallAudio(AudioFormat.G711_ULAW, fmt)


def test_bot_match_takes_the_message_holding_a_byte_not_only_one_starting_at_it() -> None:
    """A delta whose first byte falls inside a message is matched to that message; past the last message's
    end (the bytes received) it is unmatched."""
    layout = LegLayout.of(WireFormat.of("l16", 8000), "pcm16", playout_rule("exotel"))
    deltas = [
        Delta(1.0, 0, 0, 100),
        Delta(1.1, 0, 100, 100),
        Delta(1.2, 0, 200, 100),
        Delta(1.3, 0, 300, 100),
    ]
    match = bot_latencies(deltas, [1.25], [0], layout, (0.0, 9.0), media_end=3200)
    assert match.latencies == pytest.approx([0.25, 0.15, 0.05])
    assert match.immediate == pytest.approx([0.05])
    assert (match.waited, match.unmatched) == (2, 1)
