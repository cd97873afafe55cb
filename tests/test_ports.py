"""controlplane.ports: free ports outside the range outgoing connections draw from."""

from __future__ import annotations

import socket

import pytest

from controlplane import ports


def test_ports_are_below_the_ephemeral_range_bindable_and_never_given_twice() -> None:
    start = ports._ephemeral_start()
    given = [ports.unused_port() for _ in range(300)]
    assert len(set(given)) == len(given)
    assert all(10000 <= p < start for p in given), (start, given)
    for port in given[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            free = other.getsockname()[1]
        draws = iter([busy, busy, free])  # the random draws: the busy port twice, then a free one
        monkeypatch.setattr(ports.random, "randrange", lambda a, b: next(draws))
        monkeypatch.setattr(ports, "_ephemeral_start", lambda: 65000)
        assert ports.unused_port() == free
