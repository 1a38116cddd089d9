#!/usr/bin/env python3
"""A small notes store kept in the session's work directory (the current directory).

notes.py list [LIMIT] | read PATH | write PATH | delete PATH [--dry-run]
`write` takes the note's content from the `content` field of the JSON arguments on stdin.
"""
import json
import os
import sys

ROOT = os.path.join(os.getcwd(), "notes")


def resolve(path):
    full = os.path.realpath(os.path.join(ROOT, path))
    if not full.startswith(os.path.realpath(ROOT) + os.sep):
        sys.exit(f"path {path!r} is outside the notes directory")
    return full


def main(argv):
    if not argv:
        sys.exit("usage: notes.py list|read|write|delete ...")
    command, rest = argv[0], argv[1:]
    os.makedirs(ROOT, exist_ok=True)
    if command == "list":
        limit = int(rest[0]) if rest else 50
        names = []
        for base, _, files in os.walk(ROOT):
            for name in files:
                names.append(os.path.relpath(os.path.join(base, name), ROOT))
        print(json.dumps({"notes": sorted(names)[:limit]}))
    elif command == "read":
        with open(resolve(rest[0]), encoding="utf-8") as f:
            print(f.read(), end="")
    elif command == "write":
        args = json.load(sys.stdin)
        full = resolve(rest[0])
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="utf-8") as f:
            f.write(args.get("content", ""))
        print(f"wrote {rest[0]} ({len(args.get('content', ''))} characters)")
    elif command == "delete":
        full = resolve(rest[0])
        if not os.path.exists(full):
            sys.exit(f"no note {rest[0]!r}")
        if "--dry-run" in rest[1:]:
            print(f"would delete {rest[0]} ({os.path.getsize(full)} bytes)")
        else:
            os.remove(full)
            print(f"deleted {rest[0]}")
    else:
        sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
