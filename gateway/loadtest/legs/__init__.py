"""Fake provider legs: each provider's side of a media stream, as a real WebSocket client.

One module per provider (the Twilio leg is gateway/loadtest/client.py); common.py holds what the JSON
media-stream fakes share. The integration tests and bench/bargein.py drive them against a real gateway.
"""

__all__: list[str] = []
