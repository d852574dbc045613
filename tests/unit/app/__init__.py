"""Unit tests for app: settings, topics, logging and the pure parts of the sink."""
