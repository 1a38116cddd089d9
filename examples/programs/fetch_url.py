#!/usr/bin/env python3
"""Fetches a web page and prints its text (at most 200 kB). fetch_url.py URL"""
import sys
import urllib.request

url = sys.argv[1]
request = urllib.request.Request(url, headers={"User-Agent": "toolwarden-example/1"})
with urllib.request.urlopen(request, timeout=10) as response:
    sys.stdout.write(response.read(200_000).decode("utf-8", errors="replace"))
