"""bridge/redact.py: credentials out of text."""
from __future__ import annotations

from bridge import redact


def test_every_secret_is_masked_the_longest_first():
    text = "User 1001 password hunter2-long was refused (hunter2)"
    assert redact.secrets(text, ["hunter2", "hunter2-long", ""]) == "User 1001 password *** was refused (***)"
    assert redact.secrets("'pw'", ["'pw'"], "'***'") == "'***'"


def test_a_url_keeps_everything_but_its_password():
    assert redact.url("postgresql://cti:s3cret@db.example:5432/cti") == "postgresql://cti:***@db.example:5432/cti"
    assert redact.url("sqlite:///cti-bridge.db") == "sqlite:///cti-bridge.db"
