"""Unit tests for the HTTP ingress helpers."""
