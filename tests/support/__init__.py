"""Helpers for the tests that are not fixtures: command runners, run folders, servers, a browser.

Test modules import from here (never from another test module or from ``tests/conftest.py``); the
shared fixtures built on these helpers live in ``tests/conftest.py``.
"""
