"""Free local ports that no outgoing connection can take before they are bound.

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, the same range every
outgoing connection draws its source port from: between choosing such a port and a program
binding it, any connection (a gateway to its control plane, a client to Redis) may take it.
Ports below that range are taken only by programs that ask for them by number, so one chosen
there stays free until it is bound, unless another program picks the same number; a process
never hands out the same port twice.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000
_given: set[int] = set()
_lock = threading.Lock()


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int, host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def unused_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on, below the ephemeral range when there is room."""
    top = _ephemeral_start()
    with _lock:
        if top - _LOWEST >= 1000:
            for _ in range(200):
                port = random.randrange(_LOWEST, top)
                if port not in _given and _bindable(port, host):
                    _given.add(port)
                    return port
        with socket.socket() as s:  # no room below the range: what the kernel gives
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        _given.add(port)
        return port
