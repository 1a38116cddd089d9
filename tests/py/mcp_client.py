"""Drives a running Toolwarden gateway with the official MCP Python SDK (v2 API).

Run by tests/python_sdk.rs with MCP_URL, MCP_TOKEN and MCP_MODE ("legacy": the initialize handshake with
an Mcp-Session-Id; "auto": whatever the SDK negotiates, 2026-07-28 when the server offers it). Prints one
line per check and exits non-zero on the first failure.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

URL = os.environ["MCP_URL"]
TOKEN = os.environ["MCP_TOKEN"]
MODE = os.environ.get("MCP_MODE", "legacy")


def check(condition, what, detail=""):
    if not condition:
        print(f"FAIL {MODE}: {what}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {MODE}: {what}", flush=True)


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def main():
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"})
    async with http:
        transport = streamable_http_client(URL, http_client=http)
        async with Client(transport, mode=MODE, client_info=None) as client:
            check(bool(client.protocol_version), "connected", client.protocol_version)
            print(f"protocol {client.protocol_version}", flush=True)

            tools = await client.list_tools()
            names = [t.name for t in tools.tools]
            check(names == ["show_text"], "tools/list shows only what the developer may call", names)
            show = tools.tools[0]
            check(show.annotations is not None and show.annotations.read_only_hint is True,
                  "a read tool is annotated readOnlyHint", show.annotations)

            result = await client.call_tool("show_text", {"text": "hello from python"})
            check(not result.is_error, "an allowed call succeeds", text_of(result))
            check(json.loads(text_of(result)) == {"text": "hello from python"},
                  "the tool's output comes back", text_of(result))

            refused = await client.call_tool("show_text", {"text": "goodbye"})
            check(refused.is_error is True, "a refused call is an error result", refused)
            check("show_text only shows greetings that start with hello" in text_of(refused),
                  "the refusal carries the policy's sentence", text_of(refused))

            hidden = await client.call_tool("get_payroll", {})
            check(hidden.is_error is True and "payroll" not in text_of(hidden).replace("get_payroll", ""),
                  "a tool the caller may not see is unknown", text_of(hidden))

    # Without a token: 401 with a WWW-Authenticate header pointing at the resource metadata.
    async with httpx2.AsyncClient() as anonymous:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        response = await anonymous.post(URL, json=body, headers={"Accept": "application/json, text/event-stream"})
        check(response.status_code == 401, "no token is a 401", response.status_code)
        challenge = response.headers.get("www-authenticate", "")
        check(challenge.startswith("Bearer ") and "resource_metadata=" in challenge,
              "the 401 names the resource metadata", challenge)
        response = await anonymous.post(URL, json=body, headers={
            "Accept": "application/json, text/event-stream", "Authorization": "Bearer not-a-token"})
        check(response.status_code == 401 and "not-a-token" not in response.text, "a bad token is a 401",
              response.status_code)

    # The SDK itself surfaces the 401 as an error rather than a session.
    try:
        async with create_mcp_http_client() as bare:
            async with Client(streamable_http_client(URL, http_client=bare), mode=MODE) as client:
                await client.list_tools()
        check(False, "the SDK refuses to work without a token", "connected")
    except Exception as e:  # noqa: BLE001 - any SDK error type is fine; a session is not
        check(True, "the SDK refuses to work without a token", type(e).__name__)


asyncio.run(main())
