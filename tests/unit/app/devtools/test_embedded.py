"""The embedded stack's helpers that `sluice run` relies on before it starts anything."""

from __future__ import annotations

import socket

from app.devtools.embedded import EMBEDDED_BROKER_SETTINGS, free_port, port_taken
from app.settings import Settings


def test_a_port_with_a_listener_is_taken_and_a_free_one_is_not() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert port_taken("127.0.0.1", listener.getsockname()[1])
    assert not port_taken("127.0.0.1", free_port())


def test_only_the_embedded_broker_gets_short_fetch_waits_and_no_idempotence() -> None:
    # Apache Kafka answers a waiting fetch when records arrive and offers idempotence: the
    # defaults are Kafka's; the embedded broker's stack overrides both for its quirks.
    defaults = Settings()
    assert defaults.fetch_max_wait_ms == 500 and defaults.kafka_idempotence
    overrides = Settings(**{name.removeprefix("SLUICE_").lower(): value
                            for name, value in EMBEDDED_BROKER_SETTINGS.items()})
    assert overrides.fetch_max_wait_ms == 25 and not overrides.kafka_idempotence
