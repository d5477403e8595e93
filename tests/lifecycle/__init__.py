"""Helpers for the process-level tests of the CLI, the server lifecycle and the log."""
