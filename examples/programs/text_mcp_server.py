#!/usr/bin/env python3
"""A tiny stdio MCP server (newline-delimited JSON-RPC) with one tool, `count_words`."""
import json
import sys

TOOL = {
    "name": "count_words",
    "description": "Counts words, lines or characters in a text.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["text"],
    },
}


def count(args):
    text, unit = args.get("text", ""), args.get("unit", "words")
    n = {"words": len(text.split()), "lines": len(text.splitlines()), "chars": len(text)}.get(unit)
    if n is None:
        return {"content": [{"type": "text", "text": f"unknown unit {unit!r}"}], "isError": True}
    return {"content": [{"type": "text", "text": f"{n} {unit}"}], "structuredContent": {"count": n, "unit": unit}}


def reply(id_, result=None, error=None):
    message = {"jsonrpc": "2.0", "id": id_}
    message["error" if error else "result"] = error or result
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    try:
        request = json.loads(line)
    except json.JSONDecodeError:
        reply(None, error={"code": -32700, "message": "parse error"})
        continue
    method, id_ = request.get("method"), request.get("id")
    if id_ is None:
        continue  # notifications need no answer
    if method == "initialize":
        reply(id_, {"protocolVersion": request["params"].get("protocolVersion", "2025-06-18"),
                    "capabilities": {"tools": {}}, "serverInfo": {"name": "text-tools", "version": "1.0.0"}})
    elif method == "tools/list":
        reply(id_, {"tools": [TOOL]})
    elif method == "tools/call" and request["params"].get("name") == "count_words":
        reply(id_, count(request["params"].get("arguments") or {}))
    else:
        reply(id_, error={"code": -32601, "message": f"unknown method {method}"})
