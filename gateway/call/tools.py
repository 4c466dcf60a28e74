"""The bot's tools: the built-in `end_call` and `transfer_call`, the operator's own (`TOOLS_FILE`, run by
`TOOLS_WEBHOOK_URL`), and remote MCP servers (GA protocol only, run by the service itself).

`ToolBox` holds the definitions the realtime session is told of and knows how each tool runs. The
bridge asks it (`kind`) and runs the call; `run_webhook` is the operator's tool over HTTP: a slow,
failing or garbled webhook gives the model an error output, never a stuck call.

The tools file is JSON: a list of tool definitions as the realtime API takes them,

    [{"type": "function", "name": "lookup_order", "description": "...",
      "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}},
     {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/sse"}]
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final

import aiohttp

from gateway.realtime.events import FunctionCallRequested
from gateway.webhook import WebhookAnswer, post_json

__all__ = [
    "BUILTIN_TOOLS",
    "END_CALL",
    "TRANSFER_CALL",
    "ToolBox",
    "ToolKind",
    "error_output",
    "load_tools_file",
    "parse_arguments",
]

END_CALL: Final = "end_call"
TRANSFER_CALL: Final = "transfer_call"
BUILTIN_TOOLS: Final = (END_CALL, TRANSFER_CALL)
_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FILLER_INSTRUCTIONS: Final = (
    "Tell the caller in a few words that you are looking that up. Do not answer the question yet."
)
GOODBYE_OUTPUT: Final = '{"status": "ok", "next": "the call ends after your goodbye"}'
GOODBYE_INSTRUCTIONS: Final = "Say a short goodbye to the caller. The call ends after it."


class ToolKind(Enum):
    """Who runs a tool."""

    END_CALL = "end_call"
    TRANSFER = "transfer_call"
    WEBHOOK = "webhook"  # the operator's, over TOOLS_WEBHOOK_URL
    UNKNOWN = "unknown"  # not offered to this call: the model invented it


def error_output(message: str) -> str:
    """A function output telling the model the tool failed (it should say so, not make an answer up)."""
    return json.dumps({"error": message})


def parse_arguments(arguments: str) -> dict[str, Any] | str:
    """The model's arguments as an object, or why they are not one."""
    try:
        value = json.loads(arguments or "{}")
    except (ValueError, RecursionError):
        return "the arguments are not JSON"
    if not isinstance(value, dict):
        return "the arguments are not a JSON object"
    return value


def _end_call() -> dict[str, Any]:
    return {
        "type": "function",
        "name": END_CALL,
        "description": (
            "End the phone call. First say a short goodbye to the caller, then call this; the call ends "
            "once the goodbye has played."
        ),
        "parameters": {"type": "object", "properties": {}},
    }


def _transfer_call(destinations: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": TRANSFER_CALL,
        "description": (
            "Transfer the caller to a person or another number. Tell the caller you are transferring them "
            "first; the transfer starts once that has played."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "destination": {
                    "type": "string",
                    "enum": list(destinations),
                    "description": "where to transfer the call",
                }
            },
            "required": ["destination"],
        },
    }


def _check_tool(tool: object, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise ValueError(f"{where}: a tool must be a JSON object")
    kind = tool.get("type", "function")
    if kind == "mcp":
        label = tool.get("server_label")
        if not isinstance(label, str) or not _NAME.match(label):
            raise ValueError(f"{where}: an mcp tool needs a server_label of letters, digits, _ or -")
        if not isinstance(tool.get("server_url"), str):
            raise ValueError(f"{where}: mcp tool {label!r} needs a server_url")
        approval = tool.get("require_approval", "never")
        if approval != "never":  # nobody on a phone call can approve a tool call
            raise ValueError(f"{where}: mcp tool {label!r}: require_approval must be 'never'")
        return {**tool, "type": "mcp", "require_approval": "never"}
    if kind != "function":
        raise ValueError(f"{where}: type must be 'function' or 'mcp', got {kind!r}")
    name = tool.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: a function needs a name of 1-64 letters, digits, _ or -")
    if name in BUILTIN_TOOLS:
        raise ValueError(f"{where}: {name!r} is a built-in tool (switch it on with BOT_TOOLS)")
    if not isinstance(tool.get("description", ""), str):
        raise ValueError(f"{where}: {name}: description must be a string")
    parameters = tool.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ValueError(f"{where}: {name}: parameters must be a JSON schema of type object")
    unknown = set(tool) - {"type", "name", "description", "parameters"}
    if unknown:
        raise ValueError(f"{where}: {name}: unknown keys {', '.join(sorted(unknown))}")
    description = tool.get("description", "")
    return {"type": "function", "name": name, "description": description, "parameters": parameters}


def load_tools_file(path: str) -> tuple[dict[str, Any], ...]:
    """The tool definitions in `path`; ValueError says what is wrong (file, entry, field)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of tools")
    tools = tuple(_check_tool(tool, f"{path} entry {i + 1}") for i, tool in enumerate(data))
    names = [_tool_name(t) for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: tools named twice: {', '.join(duplicates)}")
    return tools


def _tool_name(tool: Mapping[str, Any]) -> str:
    return str(tool["server_label"] if tool["type"] == "mcp" else tool["name"])


@dataclass(frozen=True, slots=True)
class ToolBox:
    """Every tool the gateway can offer, and how each runs. `enabled` names the tools calls get unless
    their bot profile names others (built-ins, file functions by name, mcp tools by server_label)."""

    enabled: tuple[str, ...] = ()
    file_tools: tuple[dict[str, Any], ...] = ()
    transfer_to: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    timeout_s: float = 8.0
    filler_ms: int = 0  # 0: the bot says nothing while a webhook tool runs
    mcp: bool = True  # the realtime protocol takes remote MCP tools (GA does; preview has none)

    def __post_init__(self) -> None:
        self.check(self.enabled, self.transfer_to)

    def known(self) -> tuple[str, ...]:
        """Every tool name a call may be given."""
        return (*BUILTIN_TOOLS, *(_tool_name(t) for t in self.file_tools))

    def check(self, names: Sequence[str], transfer_to: Sequence[str]) -> None:
        """ValueError when `names` cannot be offered (unknown, or needing a setting that is missing)."""
        unknown = [n for n in names if n not in self.known()]
        if unknown:
            raise ValueError(f"unknown tools: {', '.join(unknown)} (known: {', '.join(self.known())})")
        if TRANSFER_CALL in names and not transfer_to:
            raise ValueError("transfer_call needs the destinations it may transfer to (TRANSFER_TO)")
        functions = {t["name"] for t in self.file_tools if t["type"] == "function"}
        if functions & set(names) and not self.webhook_url:
            raise ValueError("the tools file's functions need TOOLS_WEBHOOK_URL to run them")
        servers = {_tool_name(t) for t in self.file_tools if t["type"] == "mcp"}
        if servers & set(names) and not self.mcp:
            raise ValueError("mcp tools need the GA protocol: the preview protocol has no remote MCP tools")

    def check_profile(self, tools: Sequence[str] | None, transfer_to: Sequence[str] | None) -> None:
        """A bot profile's tools (None: the gateway's) can be offered; ValueError says why not."""
        self.check(
            self.enabled if tools is None else tools,
            self.transfer_to if transfer_to is None else transfer_to,
        )

    def definitions(
        self, names: Sequence[str] | None = None, transfer_to: Sequence[str] | None = None
    ) -> tuple[dict[str, Any], ...]:
        """The `tools` of a session offering `names` (None: `enabled`)."""
        wanted = self.enabled if names is None else tuple(names)
        targets = self.transfer_to if transfer_to is None else tuple(transfer_to)
        out: list[dict[str, Any]] = []
        if END_CALL in wanted:
            out.append(_end_call())
        if TRANSFER_CALL in wanted:
            out.append(_transfer_call(targets))
        out.extend(t for t in self.file_tools if _tool_name(t) in wanted)
        return tuple(out)

    def kind(self, name: str, offered: Sequence[str]) -> ToolKind:
        """Who runs a call of `name`, for a call that was offered `offered`."""
        if name not in offered:
            return ToolKind.UNKNOWN
        if name == END_CALL:
            return ToolKind.END_CALL
        if name == TRANSFER_CALL:
            return ToolKind.TRANSFER
        return ToolKind.WEBHOOK

    async def run_webhook(
        self, http: aiohttp.ClientSession, call: FunctionCallRequested, context: Mapping[str, Any]
    ) -> tuple[str, bool]:
        """Run an operator's tool: POST it to the webhook; its JSON answer is the output. Returns the
        output and whether the webhook answered. Never raises for the webhook's faults: they become an
        error output."""
        assert self.webhook_url is not None  # checked at start-up for every function in the file
        arguments = parse_arguments(call.arguments)
        if isinstance(arguments, str):
            return error_output(arguments), False
        payload = {"tool": call.name, "arguments": arguments, "tool_call_id": call.call_id, **context}
        answer = await post_json(
            http, self.webhook_url, payload, secret=self.webhook_secret, timeout_s=self.timeout_s
        )
        if isinstance(answer, WebhookAnswer):
            return json.dumps(answer.body, ensure_ascii=False), True
        return error_output(f"the tool {call.name} failed: {answer.reason}"), False
