"""The embedded stack's helpers that `sluice run` relies on before it starts anything."""

from __future__ import annotations

import socket

from app.devtools.embedded import free_port, port_taken


def test_a_port_with_a_listener_is_taken_and_a_free_one_is_not() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert port_taken("127.0.0.1", listener.getsockname()[1])
    assert not port_taken("127.0.0.1", free_port())
