"""Test doubles that fake the outside world at its real boundary (HTTP servers, not mocks)."""
