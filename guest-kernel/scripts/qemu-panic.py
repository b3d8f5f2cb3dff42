#!/usr/bin/env python3
"""Exercise the guest kernel's panic path under QEMU TCG (no VMM needed).

Boots target/guest/release/guest-kernel with a crash injected through
`crash_after_boot=`, waits (bounded) for the panic path's terminal serial
line, collects pvpanic events over QMP (qemu.qmp), dumps guest memory with
`dump-guest-memory` and reads from the dump, through the guest's own
VMCOREINFO note: each CPU's crash note (valid CORE/NT_PRSTATUS, pr_pid,
RIP in kernel text, CS), the panic CPU and message, the kmsg head, the
pstore region, and whether QEMU's host-side RIP of each vCPU lies in the
stop loop. Requires pyelftools, qemu.qmp, nm and addr2line.

    guest-kernel/scripts/qemu-panic.py run "crash_after_boot=PANIC@2 crash_kexec_post_notifiers"
    guest-kernel/scripts/qemu-panic.py matrix      # every policy x crash x post-notifiers
"""
import asyncio, os, subprocess, sys, time, struct, json
from qemu.qmp import QMPClient
from elftools.elf.elffile import ELFFile

KERNEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/guest/release/guest-kernel")
WORK = os.environ.get("QEMU_PANIC_WORK", "/tmp/qemu-panic")
# QEMU passes no kexec descriptor, so no capture kernel is ever loaded there:
# crashkernel= only reserves, crash_kexec is a no-op, pvpanic says PANICKED
# and the panic ends in "---[ end Kernel panic" (or a reboot with panic=).
TERMINAL = ["---[ end Kernel panic", "kexec: jumping to capture kernel",
            "panic: rebooting", "lkdtm: notifier hangs", "panic: too many nested"]

def syms():
    out = subprocess.run(["nm", KERNEL], capture_output=True, text=True).stdout
    d = {}
    for l in out.splitlines():
        p = l.split()
        if len(p) == 3:
            d[p[2]] = int(p[0], 16)
    return d

class Dump:
    def __init__(self, path):
        self.f = open(path, "rb")
        self.loads = [(s["p_paddr"], s["p_filesz"], s["p_offset"]) for s in ELFFile(self.f).iter_segments() if s["p_type"] == "PT_LOAD"]
    def read(self, pa, n):
        for (a, sz, off) in self.loads:
            if a <= pa and pa + n <= a + sz:
                self.f.seek(off + pa - a); return self.f.read(n)
        raise ValueError(hex(pa))

def sym_of(addr):
    out = subprocess.run(["addr2line", "-f", "-C", "-e", KERNEL, hex(addr)], capture_output=True, text=True).stdout.split("\n")[0]
    return out

async def main(append, smp=4, tag="run", timeout=60):
    os.makedirs(WORK, exist_ok=True)
    sock = f"{WORK}/{tag}.sock"; log = f"{WORK}/{tag}.log"; dump = f"{WORK}/{tag}.elf"
    for p in (sock, log, dump):
        if os.path.exists(p): os.unlink(p)
    q = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg,thread=single", "-kernel", KERNEL, "-smp", str(smp), "-m", "256M",
        "-display", "none", "-serial", f"file:{log}", "-no-reboot", "-net", "none", "-device", "pvpanic",
        "-action", "panic=none", "-qmp", f"unix:{sock},server,nowait", "-append", append],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(sock): break
        await asyncio.sleep(0.05)
    c = QMPClient("ph"); await c.connect(sock)
    events = []
    async def collect():
        async for ev in c.events:
            events.append(ev["event"])
    t = asyncio.create_task(collect())
    deadline = time.time() + timeout; text = ""
    while time.time() < deadline:
        text = open(log, errors="replace").read() if os.path.exists(log) else ""
        if any(m in text for m in TERMINAL): break
        await asyncio.sleep(0.1)
    done = any(m in text for m in TERMINAL)
    await asyncio.sleep(0.3)  # let the last pvpanic event arrive over QMP
    res = {"append": append, "terminal": done}
    if "panic: rebooting" not in text:
        await c.execute("dump-guest-memory", {"paging": False, "protocol": f"file:{dump}"})
    try:
        await c.execute("quit")
    except Exception:
        pass
    t.cancel()
    try:
        await c.disconnect()
    except Exception:
        pass
    q.wait(5)
    res["events"] = [e for e in events if e.startswith("GUEST")]
    res["log"] = text
    if os.path.exists(dump):
        res.update(check(dump, smp))
    return res

def check(dump, smp):
    s = syms(); d = Dump(dump)
    note = d.read(s["VMCOREINFO_NOTE"], 1024)
    namesz, descsz, typ = struct.unpack_from("<III", note)
    assert note[12:22] == b"VMCOREINFO", note[:24]
    info = dict(l.split("=", 1) for l in note[24:24 + descsz].decode().splitlines())
    base = int(info["SYMBOL(crash_notes)"], 16); stride = int(info["NUMBER(crash_notes_stride)"])
    stext = int(info["SYMBOL(_stext)"], 16); etext = int(info["SYMBOL(_etext)"], 16)
    assert base == s["CRASH_NOTES"]
    cpus = {}
    for cpu in range(int(info["NUMBER(nr_cpus)"])):
        b = d.read(base + cpu * stride, 368)
        if not any(b):
            cpus[cpu] = "missing"; continue
        nsz, dsz, ty = struct.unpack_from("<III", b)
        ok = nsz == 5 and dsz == 336 and ty == 1 and b[12:17] == b"CORE\0"
        pid = struct.unpack_from("<i", b, 20 + 32)[0]
        regs = struct.unpack_from("<27Q", b, 20 + 112)
        rip, cs = regs[16], regs[17]
        ok = ok and pid == cpu + 1 and stext <= rip < etext and cs == 8
        cpus[cpu] = ("valid " if ok else "CORRUPT ") + f"rip={rip:#x} {sym_of(rip)}"
    pc = struct.unpack("<I", d.read(int(info["SYMBOL(panic_cpu)"], 16), 4))[0]
    msg = d.read(int(info["SYMBOL(panic_msg)"], 16), 256).split(b"\0")[0].decode()
    head = struct.unpack("<Q", d.read(int(info["SYMBOL(log_buf_head)"], 16), 8))[0]
    ps = d.read(int(info["SYMBOL(pstore)"], 16), 32)
    pstore = None
    if ps[:8] == b"PSTORE01":
        ln, _, f, e = struct.unpack_from("<IIQQ", ps, 8)
        txt = d.read(int(info["SYMBOL(pstore)"], 16) + 32, ln).decode(errors="replace")
        pstore = {"len": ln, "seq": [f, e], "has_panic_line": "Kernel panic - not syncing" in txt}
    host = []
    ef = ELFFile(d.f)
    for seg in ef.iter_segments():
        if seg["p_type"] != "PT_NOTE": continue
        for n in seg.iter_notes():
            if n["n_name"] == "CORE" and n["n_type"] in (1, "NT_PRSTATUS"):
                raw = n["n_desc"] if isinstance(n["n_desc"], bytes) else None
                if raw is None:
                    d.f.seek(n["n_descdata"] if "n_descdata" in n else 0)
                rip = struct.unpack_from("<Q", bytes(raw) if raw else b"", 112 + 16 * 8)[0] if raw else None
                host.append(rip)
    lo = int(info.get("SYMBOL(stop_loop_start)", "0"), 16); hi = int(info.get("SYMBOL(stop_loop_end)", "0"), 16)
    parked = ["parked" if (r is not None and lo <= r <= hi) else (hex(r) if r else "?") for r in host]
    return {"host_rip": parked, "notes": cpus, "panic_cpu": pc, "panic_msg": msg, "log_head": head, "pstore": pstore, "vmcoreinfo_keys": len(info)}

async def matrix():
    combos = []
    for pol in ["linux", "linux-2016", "proposal-2022"]:
        for crash in ["PANIC@2", "HARDLOCKUP@1", "PANIC_ALL@1", "NOTIFIER_HANG@3"]:
            for post in ["", " crash_kexec_post_notifiers"]:
                combos.append(f"panic_policy={pol} crash_after_boot={crash} crashkernel=64M{post}")
            if pol == "proposal-2022":
                combos.append(f"panic_policy={pol} crash_after_boot={crash} crashkernel=64M crash_kexec_post_hypervisor")
    for i, a in enumerate(combos):
        r = await main(a, tag=f"m{i}", timeout=40)
        log = r.pop("log")
        keys = [l for l in log.splitlines() if l.startswith(("crash:", "smp:", "panic: step", "panic: nested", "kexec:", "lkdtm: notifier"))]
        notes = r.get("notes", {})
        short = " ".join(f"{c}:{'V' if v.startswith('valid') else ('M' if v == 'missing' else 'C')}" for c, v in notes.items())
        print(f"{a}\n   terminal={r['terminal']} events={r['events']} notes[{short}] host_rip={r.get('host_rip')} panic_cpu={r.get('panic_cpu')}\n   " + " | ".join(keys), flush=True)

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "matrix":
        asyncio.run(matrix())
        sys.exit(0)
    if len(sys.argv) < 3 or sys.argv[1] != "run":
        sys.exit(__doc__)
    append = sys.argv[2]
    r = asyncio.run(main(append, tag="run"))
    full = r.pop("log")
    print(full[full.find("PVH boot"):])
    print(json.dumps(r, indent=1))
