"""Tool definitions, the tools file's checks, the function-call events of both protocols (validated
against the SDK's models), and the webhook signature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.call.tools import ToolBox, ToolKind, load_tools_file, parse_arguments
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.realtime.codec import RealtimeCodec
from gateway.realtime.events import FunctionCallRequested, FunctionOutput, IgnoredEvent, UpdateSession
from gateway.realtime.session import Protocol, SessionSettings
from gateway.webhook import sign, verify_signature
from tests.sdk_models import BETA_CLIENT, BETA_SERVER, GA_CLIENT, GA_SERVER, validate_event

LOOKUP = {
    "type": "function",
    "name": "lookup_order",
    "description": "Find an order",
    "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
}
MCP = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/mcp"}


def _write(tmp_path: Path, tools: Any) -> str:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(tools))
    return str(path)


def test_the_tools_file_loads_functions_and_mcp_servers(tmp_path: Path) -> None:
    tools = load_tools_file(_write(tmp_path, [LOOKUP, MCP]))
    assert tools[0] == LOOKUP
    assert tools[1] == {**MCP, "require_approval": "never"}  # nobody on a phone call can approve


@pytest.mark.parametrize(
    ("tools", "problem"),
    [
        ({"name": "x"}, "expected a JSON list"),
        ([{"type": "function"}], "entry 1: a function needs a name"),
        ([{**LOOKUP, "name": "end_call"}], "built-in tool"),
        ([{**LOOKUP, "parameters": {"type": "string"}}], "parameters must be a JSON schema of type object"),
        ([{**LOOKUP, "strict": True}], "unknown keys strict"),
        ([LOOKUP, LOOKUP], "tools named twice: lookup_order"),
        ([{**MCP, "require_approval": "always"}], "require_approval must be 'never'"),
        ([{"type": "mcp", "server_label": "crm"}], "needs a server_url"),
        ([{"type": "web_search"}], "type must be 'function' or 'mcp'"),
    ],
)
def test_a_bad_tools_file_names_the_problem(tmp_path: Path, tools: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        load_tools_file(_write(tmp_path, tools))


def test_a_missing_or_garbled_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_tools_file(str(tmp_path / "absent.json"))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ValueError, match="is not JSON"):
        load_tools_file(str(tmp_path / "bad.json"))


def test_the_box_refuses_tools_that_cannot_run() -> None:
    with pytest.raises(ValueError, match="unknown tools: nope"):
        ToolBox(enabled=("nope",))
    with pytest.raises(ValueError, match="TRANSFER_TO"):
        ToolBox(enabled=("transfer_call",))
    with pytest.raises(ValueError, match="TOOLS_WEBHOOK_URL"):
        ToolBox(enabled=("lookup_order",), file_tools=(LOOKUP,))
    with pytest.raises(ValueError, match="mcp tools need the GA protocol"):
        ToolBox(enabled=("crm",), file_tools=(MCP,), mcp=False)


def test_mcp_tools_are_refused_on_a_preview_backend(tmp_path: Path) -> None:
    """At start-up, whether BOT_TOOLS offers the mcp server or a bot profile does; on GA both are taken."""
    tools = _write(tmp_path, [MCP])
    preview = {
        "REALTIME_URL": "wss://r.openai.azure.com/openai/realtime?api-version=2024-10-01-preview&deployment=d",
        "REALTIME_API_KEY": "k",
        "TOOLS_FILE": tools,
    }
    with pytest.raises(ConfigError, match="BOT_TOOLS=crm is invalid: mcp tools need the GA protocol"):
        load_settings({**preview, "BOT_TOOLS": "crm"})
    bots = tmp_path / "bots.toml"
    bots.write_text('[[bot]]\nname = "sales"\nnumbers = ["100"]\ntools = ["crm"]\n')
    with pytest.raises(ConfigError, match="bot 'sales': tools: mcp tools need the GA protocol"):
        load_settings({**preview, "BOTS_FILE": str(bots)})
    assert load_settings({"TOOLS_FILE": tools, "BOT_TOOLS": "crm", "BOTS_FILE": str(bots)}).bot_tools == (
        "crm",
    )


def test_definitions_and_kinds() -> None:
    box = ToolBox(
        enabled=("end_call", "transfer_call", "lookup_order"),
        file_tools=(LOOKUP,),
        transfer_to=("+15550100", "sip:desk@pbx.example.com"),
        webhook_url="http://127.0.0.1:1/tools",
    )
    names = [t["name"] for t in box.definitions()]
    assert names == ["end_call", "transfer_call", "lookup_order"]
    transfer = box.definitions()[1]["parameters"]["properties"]["destination"]
    assert transfer["enum"] == ["+15550100", "sip:desk@pbx.example.com"]
    assert [t["name"] for t in box.definitions(["end_call"])] == ["end_call"]
    offered = ("end_call", "lookup_order")
    assert box.kind("end_call", offered) is ToolKind.END_CALL
    assert box.kind("lookup_order", offered) is ToolKind.WEBHOOK
    assert box.kind("transfer_call", offered) is ToolKind.UNKNOWN  # not offered to this call


def test_arguments_must_be_a_json_object() -> None:
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("") == {}
    assert parse_arguments("[1]") == "the arguments are not a JSON object"
    assert parse_arguments("{") == "the arguments are not JSON"


@pytest.mark.parametrize("protocol", [Protocol.GA, Protocol.PREVIEW])
def test_both_protocols_carry_tools_calls_and_outputs(protocol: Protocol) -> None:
    """session.update with tools, the service's function_call item, and our function_call_output: each
    in the protocol's shape, as the SDK's models take them."""
    box = ToolBox(enabled=("end_call",))
    codec = RealtimeCodec(protocol, SessionSettings(tools=(*box.definitions(), LOOKUP)))
    client, server = (GA_CLIENT, GA_SERVER) if protocol is Protocol.GA else (BETA_CLIENT, BETA_SERVER)
    update = json.loads(codec.encode(UpdateSession()))
    validate_event(client, update)
    assert [t["name"] for t in update["session"]["tools"]] == ["end_call", "lookup_order"]
    assert update["session"]["tool_choice"] == "auto"
    output = json.loads(codec.encode(FunctionOutput("call_1", '{"ok": true}')))
    validate_event(client, output)
    assert output["item"] == {"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'}
    item = {
        "id": "item_1",
        "type": "function_call",
        "status": "completed",
        "name": "lookup_order",
        "call_id": "call_1",
        "arguments": '{"order": "A1"}',
    }
    if protocol is Protocol.GA:
        item["object"] = "realtime.item"
    done = {
        "type": "response.output_item.done",
        "event_id": "ev_1",
        "response_id": "resp_1",
        "output_index": 1,
        "item": item,
    }
    validate_event(server, done)
    assert codec.decode(json.dumps(done)) == FunctionCallRequested(
        "resp_1", "item_1", "call_1", "lookup_order", '{"order": "A1"}'
    )
    cut = {**done, "item": {**item, "status": "incomplete"}}  # a cancelled response's half-made call
    assert codec.decode(json.dumps(cut)) == IgnoredEvent("response.output_item.done")


def test_no_tools_no_tools_field() -> None:
    update = json.loads(RealtimeCodec(Protocol.GA, SessionSettings()).encode(UpdateSession()))
    assert "tools" not in update["session"]
    assert "tool_choice" not in update["session"]


def test_webhook_signature_round_trip() -> None:
    body = b'{"tool":"lookup_order"}'
    header = sign("s3cret", body, 1_800_000_000)
    assert verify_signature("s3cret", body, header, 1_800_000_010) is None
    assert verify_signature("other", body, header, 1_800_000_010) == "signature mismatch"
    assert verify_signature("s3cret", body + b" ", header, 1_800_000_010) == "signature mismatch"
    assert verify_signature("s3cret", body, header, 1_800_000_900) == "signature too old"
    assert verify_signature("s3cret", body, None, 0) == "no signature"
    assert verify_signature("s3cret", body, "t=x,v1=y", 0) == "malformed signature"
