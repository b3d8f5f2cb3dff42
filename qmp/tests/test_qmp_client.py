#!/usr/bin/env python3
"""Drive the QMP server with the unmodified PyPI client, qemu.qmp.

The socket path comes from the QMP_SOCKET environment variable. The Rust test
tests/python_client.rs starts a server with the stub VMM behind it and runs
this script; it prints OK at the end and exits non-zero on any failure.
"""

import asyncio
import os
import sys

try:
    from qemu.qmp import ExecuteError, QMPClient
except ImportError as err:  # pragma: no cover - reported by the Rust test
    print(f"qemu.qmp is not installed ({err}): pip install qemu.qmp", file=sys.stderr)
    sys.exit(3)

TIMEOUT = 10.0


async def expect_event(listener, name):
    event = await asyncio.wait_for(listener.get(), TIMEOUT)
    assert event["event"] == name, f"expected {name}, got {event}"
    assert set(event["timestamp"]) == {"seconds", "microseconds"}, event
    return event


def execute(qmp, command, arguments=None):
    """qmp.execute, bounded so that a silent server fails the test."""
    return asyncio.wait_for(qmp.execute(command, arguments), TIMEOUT)


async def main():
    path = os.environ["QMP_SOCKET"]
    qmp = QMPClient("vmm-test")
    await asyncio.wait_for(qmp.connect(path), TIMEOUT)
    greeting = qmp.greeting
    assert greeting is not None and greeting.QMP.capabilities == [], greeting

    status = await execute(qmp, "query-status")
    assert status == {"running": True, "singlestep": False, "status": "running"}, status

    version = await execute(qmp, "query-version")
    assert version["qemu"] == {"major": 7, "minor": 2, "micro": 0}, version
    assert version["package"].startswith("vmm "), version

    names = [c["name"] for c in await execute(qmp, "query-commands")]
    assert "query-status" in names and "inject-nmi" in names, names

    try:
        await execute(qmp, "no-such-command")
        raise AssertionError("an unknown command succeeded")
    except ExecuteError as err:
        assert err.error_class == "CommandNotFound", err.error_class

    with qmp.listener() as listener:
        await execute(qmp, "stop")
        await expect_event(listener, "STOP")
        assert (await execute(qmp, "query-status"))["status"] == "paused"
        await execute(qmp, "cont")
        await expect_event(listener, "RESUME")

        await execute(qmp, "set-action", {"panic": "pause"})
        await execute(qmp, "x-inject-crash", {"type": "panic"})
        panicked = await expect_event(listener, "GUEST_PANICKED")
        assert panicked["data"] == {"action": "pause"}, panicked
        await expect_event(listener, "STOP")
        assert (await execute(qmp, "query-status"))["status"] == "guest-panicked"

        await execute(qmp, "quit")
        shutdown = await expect_event(listener, "SHUTDOWN")
        assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}, shutdown

    await qmp.disconnect()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main())
