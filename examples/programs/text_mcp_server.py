#!/usr/bin/env python3
"""A tiny stdio MCP server (newline-delimited JSON-RPC) with one tool, `count_words`.

text_mcp_server.py [--crash-on WORD] [--garbage-on WORD] [--slow-on WORD] [--record FILE]
For tests of what a client does with a broken server: a count_words text containing WORD makes the
server exit abruptly (--crash-on), answer with a line that is not JSON (--garbage-on) or take three
seconds (--slow-on); --record appends every message the server reads to FILE.
"""
import argparse
import json
import os
import sys
import time

options = argparse.ArgumentParser(description="A tiny stdio MCP server with one tool, count_words.")
options.add_argument("--crash-on", metavar="WORD", help="exit abruptly when a text contains WORD")
options.add_argument("--garbage-on", metavar="WORD", help="answer with a non-JSON line when a text contains WORD")
options.add_argument("--slow-on", metavar="WORD", help="take three seconds when a text contains WORD")
options.add_argument("--record", metavar="FILE", help="append every message read to FILE")
OPTIONS = options.parse_args()

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
    if OPTIONS.record:
        with open(OPTIONS.record, "a") as record:
            record.write(line)
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
        arguments = request["params"].get("arguments") or {}
        text = str(arguments.get("text", ""))
        if OPTIONS.crash_on and OPTIONS.crash_on in text.split():
            sys.stderr.write("text_mcp_server: crashing on request\n")
            sys.stderr.flush()
            os._exit(3)
        if OPTIONS.garbage_on and OPTIONS.garbage_on in text.split():
            sys.stdout.write("this is not JSON-RPC\n")
            sys.stdout.flush()
            continue
        if OPTIONS.slow_on and OPTIONS.slow_on in text.split():
            time.sleep(3)
        reply(id_, count(arguments))
    else:
        reply(id_, error={"code": -32601, "message": f"unknown method {method}"})
