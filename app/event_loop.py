"""The event loop both long-running processes use: uvloop.

Profiles of the worker and the web process showed a fifth of their time in asyncio's
socket transports and selector (Kafka, PostgreSQL and HTTP traffic); uvloop does that
work in C. Installed as the policy before either process creates its loop.
"""

from __future__ import annotations

import asyncio

import uvloop


def install() -> None:
    """Make every event loop created from now on a uvloop loop."""
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
