#!/usr/bin/env python3
"""Removes the session's cache directory. cache.py purge"""
import os
import shutil

shutil.rmtree(os.path.join(os.getcwd(), "cache"), ignore_errors=True)
print("cache purged")
