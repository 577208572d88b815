"""Test doubles of upstream model files that users bring to pointpeft (written from their structure)."""
