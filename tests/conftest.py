"""Puts tests/ (for helpers.py) and the repo root (for dummy_forcing_core) on sys.path."""
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from helpers import make_tiny_wan  # noqa: E402


@pytest.fixture
def tiny_wan():
    return make_tiny_wan()
