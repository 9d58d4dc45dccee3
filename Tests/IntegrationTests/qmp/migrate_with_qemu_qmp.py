#!/usr/bin/env python3
"""Drives a whole live migration between two swiftvmm processes through their QMP monitors
with QEMU's own client library (`qemu.qmp` from PyPI), then runs `qmp-shell` against the target.

    migrate_with_qemu_qmp.py SOURCE_QMP_SOCKET TARGET_QMP_SOCKET MIGRATION_URI

Prints one line per step and `QMP-MIGRATION PASS` at the end; exits 1 with `FAIL reason` on
the first thing that is not as QEMU's protocol says. Every wait is bounded.
"""
import asyncio
import os
import shutil
import subprocess
import sys

from qemu.qmp import QMPClient

FINAL = ("completed", "failed", "cancelled")


def check(cond, what):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


class Monitor:
    """A QMPClient that keeps every event it receives."""

    def __init__(self, name):
        self.client = QMPClient(name)
        self.events = []
        self.arrived = asyncio.Event()
        self.task = None

    async def connect(self, path):
        await self.client.connect(path)
        self.task = asyncio.create_task(self._collect())

    async def _collect(self):
        async for event in self.client.events:
            self.events.append(event)
            self.arrived.set()

    def names(self):
        return [e["event"] for e in self.events]

    def migration_statuses(self):
        return [e["data"]["status"] for e in self.events if e["event"] == "MIGRATION"]

    async def wait_for(self, predicate, timeout=60):
        async def loop():
            while not predicate(self):
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(loop(), timeout)

    async def close(self):
        if self.task:
            self.task.cancel()
        await self.client.disconnect()


async def migrate(source_path, target_path, uri):
    src, dst = Monitor("source"), Monitor("target")
    await src.connect(source_path)
    await dst.connect(target_path)
    greeting = src.client.greeting.QMP
    check("swiftvmm" in greeting.version["package"] and greeting.capabilities == [],
          f"greeting {greeting.version}")

    status = await src.client.execute("query-status")
    check(status == {"running": True, "singlestep": False, "status": "running"}, f"source query-status {status}")
    status = await dst.client.execute("query-status")
    check(status["status"] == "inmigrate" and status["running"] is False, f"target query-status {status}")

    await src.client.execute("migrate-set-parameters", {"downtime-limit": 100, "max-bandwidth": 1 << 30})
    params = await src.client.execute("query-migrate-parameters")
    check(params["downtime-limit"] == 100 and params["max-bandwidth"] == 1 << 30, f"parameters {params}")

    check(await src.client.execute("migrate", {"uri": uri}) == {}, "migrate returns at once")
    info = {}
    for _ in range(1200):  # bounded: at most ~60 s
        info = await src.client.execute("query-migrate")
        if info.get("status") in FINAL:
            break
        await asyncio.sleep(0.05)
    check(info.get("status") == "completed", f"query-migrate ends completed: {info.get('status')} {info.get('error-desc', '')}")
    ram = info.get("ram", {})
    check(all(k in info for k in ("total-time", "downtime", "setup-time")), "total-time, downtime, setup-time")
    check(ram.get("total", 0) > 0 and ram.get("transferred", 0) > 0 and ram.get("remaining") == 0,
          f"ram total {ram.get('total')} transferred {ram.get('transferred')} remaining {ram.get('remaining')}")

    await src.wait_for(lambda m: "completed" in m.migration_statuses() and "STOP" in m.names())
    statuses = src.migration_statuses()
    check(statuses[0] == "setup" and "active" in statuses and statuses[-1] == "completed",
          f"source MIGRATION events {statuses}")
    completed = next(i for i, e in enumerate(src.events) if e["event"] == "MIGRATION" and e["data"]["status"] == "completed")
    check(src.names().index("STOP") < completed, f"source STOP before MIGRATION completed ({src.names()})")
    await dst.wait_for(lambda m: "completed" in m.migration_statuses() and "RESUME" in m.names())
    check(dst.migration_statuses()[-1] == "completed", f"target MIGRATION events {dst.migration_statuses()}")
    stamps = [e["timestamp"] for e in src.events + dst.events]
    check(all(t["seconds"] > 0 and 0 <= t["microseconds"] < 1000000 for t in stamps), f"{len(stamps)} event timestamps")

    status = await dst.client.execute("query-status")
    check(status["running"] is True and status["status"] == "running", f"target runs the guest: {status}")
    await src.close()  # the source exits once the client that migrated it has gone
    await dst.close()


def qmp_shell(target_path):
    exe = shutil.which("qmp-shell") or shutil.which("qmp-shell", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "qemu.qmp.qmp_shell"]
    r = subprocess.run(cmd + [target_path], input="query-status\n", capture_output=True, text=True, timeout=60)
    check(r.returncode == 0 and '"status": "running"' in r.stdout.replace("'", '"'),
          f"qmp-shell query-status: {r.stdout.strip()[-200:]} {r.stderr.strip()[-200:]}")


async def quit_target(target_path):
    dst = Monitor("target")
    await dst.connect(target_path)
    await dst.client.execute("quit")
    await dst.wait_for(lambda m: "SHUTDOWN" in m.names(), timeout=30)
    shutdown = next(e for e in dst.events if e["event"] == "SHUTDOWN")
    check(shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}, f"SHUTDOWN {shutdown['data']}")
    await dst.close()


def main():
    source_path, target_path, uri = sys.argv[1:4]
    asyncio.run(migrate(source_path, target_path, uri))
    qmp_shell(target_path)
    asyncio.run(quit_target(target_path))
    print("QMP-MIGRATION PASS", flush=True)


if __name__ == "__main__":
    main()
