"""Tests for ``tlstunnel.tls`` (a package so its module names do not clash with others)."""
