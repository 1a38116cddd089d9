#!/usr/bin/env python3
"""Offline stand-in for a mail relay: appends the message to outbox.jsonl in the work directory.

send_email.py [--preview]; the message (to, subject, body) arrives as JSON on stdin.
"""
import json
import sys

message = json.load(sys.stdin)
summary = f"to {message['to']}: {message['subject']!r} ({len(message.get('body', ''))} characters)"
if "--preview" in sys.argv[1:]:
    print(f"would send an email {summary}")
else:
    with open("outbox.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(message) + "\n")
    print(f"queued an email {summary}")
