"""Unit tests for schemas: targets, conversion and identity."""
