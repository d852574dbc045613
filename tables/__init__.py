"""Changelog-backed Faust tables, named for the mapping they hold."""
