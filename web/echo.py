"""Client values quoted back in error messages, cut to a short prefix.

A problem detail that repeats what the client sent (a target name, a header) must not
grow with it: a 5 MB target name would otherwise come back as a 5 MB answer, and land
in every log line that records the refusal.
"""

from __future__ import annotations

from typing import Final

ECHO_CHARS: Final = 64
"""Longest prefix of a client value repeated in an answer; target names are at most 63."""


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr`` of a client value, or of its first ``limit`` characters and its length."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"
