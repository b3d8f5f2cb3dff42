"""Drives the real vmm over QMP with the unmodified PyPI `qemu.qmp` client.

Run by tests/tests/qmp_python.rs, which starts `vmm run --api-socket`
with a guest booted with `unknown_nmi_panic`. Environment:
  QMP_SOCKET    the socket path
  PANIC_ACTION  the GUEST_PANICKED action expected (e.g. "pause")
Prints "OK" last on success; any failure raises.
"""

import asyncio
import os
import sys

from qemu.qmp import QMPClient

TIMEOUT = 60


async def next_event(qmp, name):
    """The next event called `name`; earlier ones are skipped."""
    while True:
        event = await asyncio.wait_for(qmp.events.get(), TIMEOUT)
        if event["event"] == name:
            return event


async def main():
    socket = os.environ["QMP_SOCKET"]
    expected_action = os.environ["PANIC_ACTION"]
    qmp = QMPClient("vmm-test")
    await asyncio.wait_for(qmp.connect(socket), TIMEOUT)
    try:
        await exercise(qmp, expected_action)
    finally:
        # Also on failure, so that the script ends instead of waiting on
        # the open connection. After `quit` the VMM has closed it already,
        # which disconnect() reports as EOFError.
        try:
            await qmp.disconnect()
        except EOFError:
            pass
    print("OK")


async def exercise(qmp, expected_action):
    status = await qmp.execute("query-status")
    assert status["status"] == "running" and status["running"], status

    await qmp.execute("stop")
    await next_event(qmp, "STOP")
    status = await qmp.execute("query-status")
    assert status["status"] == "paused", status
    await qmp.execute("cont")
    await next_event(qmp, "RESUME")

    await qmp.execute("inject-nmi")
    panicked = await next_event(qmp, "GUEST_PANICKED")
    assert panicked["data"]["action"] == expected_action, panicked
    if expected_action == "pause":
        status = await qmp.execute("query-status")
        assert status["status"] == "guest-panicked", status

    await qmp.execute("quit")
    shutdown = await next_event(qmp, "SHUTDOWN")
    assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}, shutdown


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
