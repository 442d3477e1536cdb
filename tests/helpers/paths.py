"""Where the repository's files are, from any depth under tests/."""
from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
FIXTURES = ROOT / "fixtures" / "audio"
CALL_WAV = FIXTURES / "call.wav"
DOCS = ROOT / "docs"
SCENARIOS = ROOT / "scenarios"
HELPERS = TESTS / "helpers"
THIRDPARTY = TESTS / "thirdparty"  # foreign targets and their config files
