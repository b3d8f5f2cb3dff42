#!/usr/bin/env python3
"""Parse a vmcore with pyelftools, independently of the Rust reader.

Usage: check_vmcore.py VMCORE
Prints one JSON object: header fields, every note (name, type, descsz, and
for CORE/NT_PRSTATUS the pr_pid and RIP), every PT_LOAD, and the first 16
bytes at each PT_LOAD's start. Exits 1 on anything structurally wrong.
"""
import json
import struct
import sys

from elftools.elf.elffile import ELFFile


def main(path):
    out = {"notes": [], "loads": []}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        h = elf.header
        out["class"] = elf.elfclass
        out["type"] = h["e_type"]
        out["machine"] = h["e_machine"]
        segs = list(elf.iter_segments())
        if not segs or segs[0]["p_type"] != "PT_NOTE":
            print("phdr[0] is not PT_NOTE", file=sys.stderr)
            return 1
        for seg in segs:
            if seg["p_type"] == "PT_NOTE":
                for n in seg.iter_notes():
                    desc = n["n_desc"]
                    raw = desc if isinstance(desc, (bytes, bytearray)) else None
                    note = {
                        "name": n["n_name"],
                        "type": n["n_type"] if isinstance(n["n_type"], int) else str(n["n_type"]),
                        "descsz": n["n_descsz"],
                    }
                    if n["n_name"] == "CORE" and n["n_descsz"] == 336:
                        f.seek(n["n_offset"] + 12 + 8)
                        pr = f.read(336)
                        note["pr_pid"] = struct.unpack_from("<i", pr, 32)[0]
                        note["rip"] = struct.unpack_from("<Q", pr, 112 + 16 * 8)[0]
                    if n["n_name"] == "VMCOREINFO" and raw is not None:
                        note["text"] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                    out["notes"].append(note)
            elif seg["p_type"] == "PT_LOAD":
                f.seek(seg["p_offset"])
                head = f.read(16)
                out["loads"].append({
                    "paddr": seg["p_paddr"],
                    "vaddr": seg["p_vaddr"],
                    "filesz": seg["p_filesz"],
                    "memsz": seg["p_memsz"],
                    "head": head.hex(),
                })
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
