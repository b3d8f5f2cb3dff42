#!/bin/sh
# Fails if the guest kernel ELF uses any SSE/AVX register.
#
# This host's KVM emulates CPL0 guest code and stops the VM on several SSE
# instructions (DESIGN.md section 2), and precompiled `core` code (core::fmt)
# uses them. So the guest must contain no xmm/ymm/zmm instruction at all;
# this disassembles every executable section and lists any that appear.
#
# Usage: scripts/check-no-sse.sh [ELF]   (default: target/guest/release/guest-kernel)
set -eu

elf=${1:-target/guest/release/guest-kernel}
if [ ! -f "$elf" ]; then
    echo "check-no-sse: $elf: no such file" >&2
    exit 2
fi

disasm=$(objdump -d --no-show-raw-insn "$elf") || {
    echo "check-no-sse: objdump failed on $elf" >&2
    exit 2
}
# The ELF must have code, or the check proves nothing.
if ! printf '%s\n' "$disasm" | grep -q '^[[:space:]]*[0-9a-f]\+:'; then
    echo "check-no-sse: no instructions found in $elf" >&2
    exit 2
fi

bad=$(printf '%s\n' "$disasm" | grep -E '%[xyz]mm[0-9]+' || true)
if [ -n "$bad" ]; then
    echo "check-no-sse: $elf uses SSE/AVX registers:" >&2
    printf '%s\n' "$bad" >&2
    exit 1
fi
echo "check-no-sse: $elf: no xmm/ymm/zmm instructions"
