"""The conversation so far, as text, for carrying a call over to a new realtime session.

A sans-I/O core. A realtime session can drop or expire mid-call; the new session knows nothing. The
bridge records each turn's text here (the caller's from input transcription, the bot's from its audio
transcript, cut to the part the caller heard when it was interrupted) and replays the recent turns into
the new session as conversation items.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_REPLAY_CHARS", "Transcript", "Turn", "heard_share"]

MAX_REPLAY_CHARS = 6000  # roughly 1,500 tokens: enough context, cheap to replay


def heard_share(text: str, fraction: float) -> str:
    """The part of `text` the caller heard when they heard `fraction` of its audio (cut by characters)."""
    return text[: int(len(text) * min(1.0, max(0.0, fraction)))].rstrip()


@dataclass(slots=True)
class Turn:
    """One message of the conversation."""

    role: str  # "user" or "assistant"
    item_id: str
    text: str
    heard_fraction: float = 1.0  # for an interrupted bot item: the share of its audio the caller heard

    def spoken(self) -> str:
        """The text as the caller experienced it: cut at the heard fraction, marked when cut."""
        if self.heard_fraction >= 1.0:
            return self.text
        return f"{heard_share(self.text, self.heard_fraction)}... (interrupted by the caller)"


class Transcript:
    """Turns in conversation order, keyed by item id (a later text for the same item replaces it)."""

    def __init__(self, max_chars: int = MAX_REPLAY_CHARS) -> None:
        self.max_chars = max_chars
        self._turns: dict[str, Turn] = {}

    def __len__(self) -> int:
        return len(self._turns)

    def on_user(self, item_id: str, text: str) -> None:
        """The caller's words for a user item (input transcription)."""
        self._add("user", item_id, text)

    def on_assistant(self, item_id: str, text: str) -> None:
        """The bot's full transcript for an assistant item."""
        self._add("assistant", item_id, text)

    def on_truncated(self, item_id: str, heard_ms: int, total_ms: int) -> None:
        """The bot item was cut after `heard_ms` of its `total_ms` of audio (the caller interrupted)."""
        turn = self._turns.get(item_id)
        fraction = heard_ms / total_ms if total_ms > 0 else 0.0
        if turn is None:
            self._turns[item_id] = Turn("assistant", item_id, "", fraction)
        else:
            turn.heard_fraction = fraction

    def replay(self) -> list[tuple[str, str]]:
        """(role, text) of the most recent turns that fit in `max_chars`, oldest first."""
        picked: list[tuple[str, str]] = []
        budget = self.max_chars
        for turn in reversed(self._turns.values()):
            text = turn.spoken()
            if not turn.text.strip():
                continue
            if len(text) > budget:
                break
            picked.append((turn.role, text))
            budget -= len(text)
        picked.reverse()
        return picked

    def _add(self, role: str, item_id: str, text: str) -> None:
        turn = self._turns.get(item_id)
        if turn is None:
            self._turns[item_id] = Turn(role, item_id, text)
        else:
            turn.role, turn.text = role, text
