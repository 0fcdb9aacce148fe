"""The nightly refresh: build a candidate aside, verify it, swap it in; archives, retention, rollback."""
