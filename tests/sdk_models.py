"""Validation of our realtime client events against the `openai` SDK's pydantic models (test-only).

The SDK's unions cannot tell GA from preview apart (PROTOCOLS.md 5.2), so the models are looked up by the
event's `type` in the union of the protocol the connection uses, then validated strictly, and keys the SDK
does not know (it accepts extras silently) are reported.
"""

from __future__ import annotations

import typing
from typing import Any

from openai.types import realtime as ga_types
from openai.types.beta import realtime as beta_types
from pydantic import BaseModel

__all__ = [
    "BETA_CLIENT",
    "BETA_SERVER",
    "GA_CLIENT",
    "GA_SERVER",
    "models_by_type",
    "unknown_keys",
    "validate_event",
]


def models_by_type(union: Any) -> dict[str, type[BaseModel]]:
    """Map each event `type` literal of an SDK union to its pydantic model."""

    def flatten(tp: Any) -> list[Any]:
        if typing.get_origin(tp) is typing.Annotated:
            return flatten(typing.get_args(tp)[0])
        if typing.get_origin(tp) is typing.Union:
            return [model for arg in typing.get_args(tp) for model in flatten(arg)]
        return [tp]

    return {
        literal: model
        for model in flatten(union)
        for literal in typing.get_args(model.model_fields["type"].annotation)
    }


GA_CLIENT = models_by_type(ga_types.RealtimeClientEvent)
GA_SERVER = models_by_type(ga_types.RealtimeServerEvent)
BETA_CLIENT = models_by_type(beta_types.RealtimeClientEvent)
BETA_SERVER = models_by_type(beta_types.RealtimeServerEvent)


def unknown_keys(model: BaseModel, path: str = "") -> list[str]:
    """Keys the SDK model did not know, recursively."""
    found = [f"{path}{key}" for key in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, BaseModel):
                found += unknown_keys(child, f"{path}{name}.")
    return found


def validate_event(models: dict[str, type[BaseModel]], event: dict[str, Any]) -> BaseModel:
    """Strictly validate one event against the SDK model for its type, refusing unknown keys."""
    model = models[event["type"]].model_validate(event, strict=True)
    assert unknown_keys(model) == [], f"{event['type']} has keys the SDK does not know"
    return model
