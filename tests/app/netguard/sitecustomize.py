"""Loaded by every Python process of the test server (via PYTHONPATH): records and refuses any
connection or name lookup that leaves this machine, so tests can prove the app stays offline."""

import os
import socket

_LOG = os.environ.get("SLPT_NETGUARD_LOG")
_LOCAL = ("127.", "::1", "localhost", "0.0.0.0")


def _refuse(what):
    with open(_LOG, "a") as f:
        f.write(f"pid {os.getpid()}: {what}\n")
    raise OSError(f"network access refused by the test guard: {what}")


def _is_local(host) -> bool:
    return host is None or str(host).startswith(_LOCAL)


if _LOG:
    _connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            _refuse(f"connect {address}")
        return _connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            _refuse(f"lookup {host}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.getaddrinfo = getaddrinfo
