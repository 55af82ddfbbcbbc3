"""Rendezvous for the tests' 2-process gloo groups: a TCP store on a free localhost port.

The file:// store aborted a rank now and then under load ("terminate called without an active exception" in
CI and on a busy 2-core machine); the TCP store is the one torchrun uses.
"""

import socket


def tcp_init_method() -> str:
    """``tcp://127.0.0.1:PORT`` with a port the kernel just handed out (free unless taken in the meantime)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"
