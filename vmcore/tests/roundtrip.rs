//! Write a vmcore for a synthetic guest and read everything back.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use common::*;
use guest_abi::elfnote::{NOTE_NAME_CORE, NOTE_NAME_QEMU, NT_PRSTATUS, NT_QEMU_CPUSTATE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmcore::{
    ram_regions_from_guest_memory, write_vmcore, DumpInput, Progress, Vmcore, WriteOptions,
};

#[test]
fn notes_and_memory_round_trip() {
    let dir = test_dir("roundtrip");
    let g = guest(&[0, 1, 2, 3], &[]);
    let path = dump(&g, &dir);
    let core = Vmcore::open(&path).expect("parses");

    let hosts = core.host_cpus();
    assert_eq!(hosts.len(), 4);
    for (h, c) in hosts.iter().zip(&g.cpus) {
        assert_eq!(h.vcpu, c.vcpu);
        let p = h.prstatus.expect("prstatus");
        assert_eq!(p.rip(), c.rip);
        assert_eq!(p.pr_reg[guest_abi::elfnote::reg::RAX], c.rax);
        let q = h.qemu.expect("qemu note");
        assert_eq!(q.cr[3], 0x1000);
        assert_eq!(q.cs.flags, c.cs.flags);
        assert_eq!(h.vmx, Some(g.vmx[c.vcpu as usize]));
    }
    assert_eq!(core.find_notes(NOTE_NAME_CORE, NT_PRSTATUS).count(), 4);
    assert_eq!(core.find_notes(NOTE_NAME_QEMU, NT_QEMU_CPUSTATE).count(), 4);
    let vi = core.vmcoreinfo().expect("vmcoreinfo");
    assert_eq!(vi.get("OSRELEASE"), Some("0.1.0-test"));
    let log = core.pvpanic_log().expect("well formed").expect("present");
    assert_eq!(log, g.pvpanic);

    // Physical reads, across regions, and from the hole between them.
    let mut buf = vec![0u8; 4096];
    core.read_phys(0x10_0000, &mut buf).expect("in RAM");
    assert_eq!(buf, g.low[0x10_0000..0x10_1000]);
    let mut b16 = [0u8; 16];
    core.read_phys(HIGH_GPA, &mut b16).expect("in RAM");
    assert_eq!(&b16, b"high-half-bytes!");
    assert!(core.read_phys(0x80_0000, &mut b16).is_err());
    // Virtual reads through p_vaddr: identity low, high half for HIGH_GPA.
    core.read_virt(0x10_0000, &mut buf)
        .expect("identity mapped");
    assert_eq!(buf, g.low[0x10_0000..0x10_1000]);
    core.read_virt(HIGH_VA, &mut b16).expect("high half mapped");
    assert_eq!(&b16, b"high-half-bytes!");

    // PT_LOADs: low region identity mapped, high region split into the
    // mapped 2 MiB (at HIGH_VA) and the unmapped rest (p_vaddr 0).
    let loads: Vec<(u64, u64, u64)> = core
        .loads()
        .iter()
        .map(|l| (l.paddr, l.vaddr, l.memsz))
        .collect();
    assert_eq!(
        loads,
        vec![
            (0, 0, 4 << 20),
            (HIGH_GPA, HIGH_VA, 2 << 20),
            (HIGH_GPA + (2 << 20), 0, 2 << 20),
        ]
    );
    assert!(!core.uses_pn_xnum());
    // The temporary file is gone.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("vmcore")]);
}

#[test]
fn guest_memory_mmap_sparse_gigabyte_is_fast_and_small() {
    let dir = test_dir("sparse");
    let size = 1usize << 30;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).expect("mmap");
    // Touch 64 scattered pages, and one page with zeros only.
    for i in 0..64u64 {
        mem.write_obj(0xdead_0000_u64 + i, GuestAddress(i * (16 << 20) + 0x1000))
            .expect("write");
    }
    mem.write_obj(0u64, GuestAddress(0x5000)).expect("write");
    // SAFETY: no vCPUs exist; nothing writes `mem` while the regions live.
    let ram = unsafe { ram_regions_from_guest_memory(&mem) };
    let input = DumpInput {
        ram: &ram,
        ..Default::default()
    };
    let path = dir.join("sparse.core");
    let mut last = Progress { done: 0, total: 0 };
    let t = Instant::now();
    let stats =
        write_vmcore(&path, &input, &WriteOptions::default(), &mut |p| last = p).expect("dump");
    let elapsed = t.elapsed();
    assert_eq!(last.done, size as u64);
    assert_eq!(last.total, size as u64);
    assert_eq!(stats.data_bytes, 64 * 4096);
    let md = std::fs::metadata(&path).expect("stat");
    assert!(md.len() > size as u64, "logical size covers RAM");
    let on_disk = md.blocks() * 512;
    assert!(on_disk < 4 << 20, "sparse: {on_disk} bytes allocated");
    assert!(elapsed.as_secs_f64() < 5.0, "took {elapsed:?}");

    let core = Vmcore::open(&path).expect("parse");
    for i in [0u64, 17, 63] {
        let mut b = [0u8; 8];
        core.read_phys(i * (16 << 20) + 0x1000, &mut b)
            .expect("read");
        assert_eq!(u64::from_le_bytes(b), 0xdead_0000 + i);
    }
    let mut z = [1u8; 64];
    core.read_phys(512 << 20, &mut z).expect("hole reads");
    assert_eq!(z, [0u8; 64]);
}

#[test]
fn many_loads_use_pn_xnum() {
    let dir = test_dir("xnum");
    let g = guest(&[0], &[]);
    let path = dir.join("xnum.core");
    // 8 MiB of RAM in 128-byte PT_LOADs: 65536 of them + the PT_NOTE.
    let opts = WriteOptions {
        max_load_len: 128,
        ..Default::default()
    };
    let stats = dump_with(&g, &path, &opts);
    assert_eq!(stats.loads, 65536);
    let raw = std::fs::read(&path).expect("read");
    assert_eq!(u16::from_le_bytes([raw[56], raw[57]]), 0xffff, "e_phnum");
    let core = Vmcore::from_bytes(raw).expect("parse");
    assert!(core.uses_pn_xnum());
    assert_eq!(core.loads().len(), 65536);
    let mut buf = vec![0u8; 4096];
    core.read_phys(0x10_0000, &mut buf)
        .expect("read across many loads");
    assert_eq!(buf, g.low[0x10_0000..0x10_1000]);
    core.read_virt(HIGH_VA, &mut buf[..16]).expect("virt");
    assert_eq!(&buf[..16], b"high-half-bytes!");
}

#[test]
fn bad_destination_leaves_nothing() {
    let dir = test_dir("baddest");
    let g = guest(&[], &[]);
    let ram = [vmcore::RamRegion::new(0, &g.low)];
    let input = DumpInput {
        ram: &ram,
        ..Default::default()
    };
    let missing = dir.join("no-such-dir").join("core");
    let err = write_vmcore(&missing, &input, &WriteOptions::default(), &mut |_| {})
        .expect_err("no directory");
    assert!(matches!(err, vmcore::WriteError::Create { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
}
