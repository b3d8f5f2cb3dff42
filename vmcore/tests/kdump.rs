//! The kdump path: the guest's elfcorehdr builder -> the hostile-input
//! parser -> the kdump writer -> the reader and checker; and every way a
//! guest can lie in its elfcorehdr.

mod common;

use std::path::Path;

use common::*;
use guest_abi::elfnote::{
    NOTE_NAME_CORE, NOTE_NAME_KDUMP, NOTE_NAME_VMMHOST, NT_PRSTATUS, NT_VMM_HOST_PRSTATUS,
    NT_VMM_KDUMP,
};
use guest_kernel::elfcorehdr::{build_elfcorehdr, write_vmcoreinfo_note, CoreHdrLayout, PhysRange};
use vmcore::{
    check, parse_elfcorehdr, plan_kdump_vmcore, write_kdump_vmcore, CheckOptions, ElfCoreHdr,
    ElfCoreHdrError, GuestNote, KdumpInput, RamRegion, Verdict, Vmcore, WriteError, WriteOptions,
};

const RAM_LEN: u64 = 4 << 20;
/// Where the test guest keeps its VMCOREINFO note and its elfcorehdr.
const VMCOREINFO_NOTE: u64 = 0xa000;
const ELFCOREHDR: u64 = 0xc000;
/// The crash-kernel reservation: cut out of the low region's PT_LOADs.
const CRASH_KERNEL: (u64, u64) = (0x20_0000, 0x10_0000);

fn layout() -> Vec<(u64, u64)> {
    vec![(0, RAM_LEN), (HIGH_GPA, RAM_LEN)]
}

/// A guest as the first kernel leaves it after a panic: crash notes of
/// `saved` CPUs, a VMCOREINFO note and the elfcorehdr in RAM. Returns the
/// guest and the header's length.
fn kdump_guest(saved: &[u32]) -> (Guest, usize) {
    let mut g = guest(saved, &[]);
    let text = g.vmcoreinfo.clone().expect("test guest has VMCOREINFO");
    let at = VMCOREINFO_NOTE as usize;
    let note_len =
        write_vmcoreinfo_note(&mut g.low[at..at + 0x1000], text.as_bytes()).expect("note fits");
    let ram = [
        PhysRange::new(0, RAM_LEN),
        PhysRange::new(HIGH_GPA, RAM_LEN),
    ];
    let notes: Vec<u64> = (0..NR_CPUS as u64)
        .map(|c| CRASH_NOTES + c * STRIDE)
        .collect();
    let l = CoreHdrLayout {
        ram: &ram,
        crash_kernel: PhysRange::new(CRASH_KERNEL.0, CRASH_KERNEL.1),
        crash_notes: &notes,
        crash_note_size: STRIDE,
        // The note and its empty terminator (Linux's VMCOREINFO_NOTE_SIZE).
        vmcoreinfo: PhysRange::new(VMCOREINFO_NOTE, note_len as u64),
    };
    let at = ELFCOREHDR as usize;
    let len = build_elfcorehdr(&l, &mut g.low[at..at + 4096]).expect("header fits");
    (g, len)
}

fn hdr_bytes(g: &Guest, len: usize) -> Vec<u8> {
    g.low[ELFCOREHDR as usize..ELFCOREHDR as usize + len].to_vec()
}

fn write_kdump(g: &Guest, hdr: &ElfCoreHdr, len: usize, path: &Path) -> Result<(), WriteError> {
    let ram = [RamRegion::new(0, &g.low), RamRegion::new(HIGH_GPA, &g.high)];
    let input = KdumpInput {
        ram: &ram,
        cpus: &g.cpus,
        vmx: &g.vmx,
        pvpanic: Some(&g.pvpanic),
        elfcorehdr: (ELFCOREHDR, len as u64),
    };
    write_kdump_vmcore(path, hdr, &input, &WriteOptions::default(), &mut |_| {}).map(|_| ())
}

#[test]
fn guest_header_round_trips_into_a_checkable_vmcore() {
    let dir = test_dir("kdump-roundtrip");
    let (g, len) = kdump_guest(&[0, 1, 2, 3]);
    let hdr = parse_elfcorehdr(&hdr_bytes(&g, len), &layout()).expect("valid header");
    assert_eq!(hdr.notes.len(), NR_CPUS as usize + 1);
    for (i, n) in hdr.notes.iter().take(NR_CPUS as usize).enumerate() {
        assert_eq!(
            (n.index, n.paddr, n.size),
            (i, CRASH_NOTES + i as u64 * STRIDE, STRIDE)
        );
    }
    let loads: Vec<(u64, u64, u64)> = hdr
        .loads
        .iter()
        .map(|l| (l.paddr, l.vaddr, l.len))
        .collect();
    assert_eq!(
        loads,
        vec![
            (0, 0, CRASH_KERNEL.0),
            (0x30_0000, 0x30_0000, RAM_LEN - 0x30_0000),
            (HIGH_GPA, HIGH_GPA, RAM_LEN)
        ]
    );

    let path = dir.join("vmcore");
    write_kdump(&g, &hdr, len, &path).expect("written");
    let core = Vmcore::open(&path).expect("reader accepts it");
    assert!(core.is_kdump());
    let marker = core.kdump_note().expect("marker");
    assert_eq!(
        (marker.elfcorehdr, marker.elfcorehdr_len),
        (ELFCOREHDR, len as u64)
    );
    assert_eq!(marker.guest_notes, 5, "4 crash notes + VMCOREINFO");

    // Guest notes first, in CPU order, then VMCOREINFO, then the VMM's.
    let names: Vec<&[u8]> = core.notes().iter().map(|n| n.name.as_slice()).collect();
    assert_eq!(
        &names[..5],
        &[b"CORE" as &[u8], b"CORE", b"CORE", b"CORE", b"VMCOREINFO"]
    );
    assert_eq!(core.find_notes(NOTE_NAME_CORE, NT_PRSTATUS).count(), 4);
    assert_eq!(
        core.find_notes(NOTE_NAME_VMMHOST, NT_VMM_HOST_PRSTATUS)
            .count(),
        4
    );
    assert_eq!(core.find_notes(NOTE_NAME_KDUMP, NT_VMM_KDUMP).count(), 1);
    let vi = core.vmcoreinfo().expect("guest VMCOREINFO copied");
    assert_eq!(vi.get("OSRELEASE"), Some("0.1.0-test"));

    // Host registers come from the VMMHOST notes, not the guest's CORE notes.
    let hosts = core.host_cpus();
    assert_eq!(hosts.len(), 4);
    for (h, c) in hosts.iter().zip(&g.cpus) {
        assert_eq!(h.vcpu, c.vcpu);
        assert_eq!(h.prstatus.expect("host regs").rip(), c.rip);
        assert!(h.qemu.is_some());
        assert_eq!(h.vmx, Some(g.vmx[c.vcpu as usize]));
    }
    for cpu in 0..4u32 {
        match vmcore::guest_crash_note(&core, core.vmcoreinfo().as_ref(), cpu) {
            GuestNote::Valid(p) => assert_eq!(p.rip(), TEXT.0 + 0x100 * cpu as u64),
            other => panic!("cpu {cpu}: {other:?}"),
        }
    }

    // Memory: as the header lists it, the crash kernel excluded.
    assert_eq!(core.loads().len(), 3);
    let mut buf = vec![0u8; 4096];
    core.read_phys(0x10_0000, &mut buf)
        .expect("kernel text dumped");
    assert_eq!(buf, g.low[0x10_0000..0x10_1000]);
    let mut b16 = [0u8; 16];
    core.read_phys(HIGH_GPA, &mut b16).expect("high RAM dumped");
    assert_eq!(&b16, b"high-half-bytes!");
    assert!(core.read_phys(CRASH_KERNEL.0 + 0x1000, &mut b16).is_err());

    let report = check(&core, &CheckOptions::default());
    assert!(report.ok, "{}", report.render());
    let inf = vmcore::info(&core, None);
    assert_eq!((inf.kind, inf.elfcorehdr), ("kdump", Some(ELFCOREHDR)));
    assert!(inf.render().contains("dump: kdump (elfcorehdr at 0xc000)"));
}

/// gdb makes a thread of every type-1 note whatever its name: it must see
/// exactly the guest CPUs that saved, at the guest-saved RIPs, and not the
/// VMM's host registers too.
#[test]
fn gdb_sees_one_thread_per_saved_guest_cpu() {
    let dir = test_dir("kdump-gdb");
    let (g, len) = kdump_guest(&[0, 2, 3]);
    let hdr = parse_elfcorehdr(&hdr_bytes(&g, len), &layout()).expect("valid header");
    let path = dir.join("vmcore");
    write_kdump(&g, &hdr, len, &path).expect("written");
    let out = match std::process::Command::new("gdb")
        .args(["-nx", "-batch", "-ex", "info threads", "-c"])
        .arg(&path)
        .output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: gdb: {e}");
            return;
        }
        Err(e) => panic!("gdb is required in CI: {e}"),
    };
    let threads = out
        .lines()
        .filter(|l| l.contains("LWP ") && !l.starts_with('['))
        .count();
    assert_eq!(threads, 3, "{out}");
    for cpu in [0u64, 2, 3] {
        let line = format!("LWP {}", cpu + 1);
        let rip = format!("{:#018x}", TEXT.0 + 0x100 * cpu);
        assert!(
            out.lines().any(|l| l.contains(&line) && l.contains(&rip)),
            "{line} at {rip} missing:\n{out}"
        );
    }
}

#[test]
fn a_cpu_that_never_saved_is_missing_in_both_kinds_of_dump() {
    let dir = test_dir("kdump-missing");
    let (g, len) = kdump_guest(&[0, 1, 3]);
    let hdr = parse_elfcorehdr(&hdr_bytes(&g, len), &layout()).expect("valid header");
    let kdump_path = dir.join("kdump");
    write_kdump(&g, &hdr, len, &kdump_path).expect("written");
    let host_path = dir.join("host");
    dump_with(&g, &host_path, &WriteOptions::default());

    let kdump = Vmcore::open(&kdump_path).expect("parses");
    let host = Vmcore::open(&host_path).expect("parses");
    assert!(kdump.is_kdump() && !host.is_kdump());
    assert_eq!(kdump.find_notes(NOTE_NAME_CORE, NT_PRSTATUS).count(), 3);
    let rk = check(&kdump, &CheckOptions::default());
    let rh = check(&host, &CheckOptions::default());
    assert!(!rk.ok && !rh.ok);
    for r in [&rk, &rh] {
        assert_eq!(r.vcpus.len(), 4);
        for v in &r.vcpus {
            let want = if v.vcpu == 2 {
                Verdict::Missing
            } else {
                Verdict::Pass
            };
            assert_eq!(v.guest_note.verdict, want, "vcpu {}", v.vcpu);
            assert_eq!(v.host_note.verdict, Verdict::Pass);
        }
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    }
    assert!(
        rk.failures[0].contains("vcpu 2: guest_note"),
        "{:?}",
        rk.failures
    );
}

/// The header with one program header field replaced.
fn patch_phdr(bytes: &mut [u8], index: usize, field_off: usize, v: u64) {
    let at = 64 + index * 56 + field_off;
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn patch_load(bytes: &mut [u8], index: usize, start: u64, len: u64) {
    patch_phdr(bytes, index, 8, start);
    patch_phdr(bytes, index, 24, start);
    patch_phdr(bytes, index, 32, len);
    patch_phdr(bytes, index, 40, len);
}

#[test]
fn hostile_headers_are_rejected_with_the_exact_problem() {
    let (g, len) = kdump_guest(&[0, 1, 2, 3]);
    let good = hdr_bytes(&g, len);
    let ram = layout();
    let parse = |b: &[u8]| parse_elfcorehdr(b, &ram);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        parse(&b)
    };
    // First PT_LOAD is program header 5 (4 CPU notes + VMCOREINFO).
    const L0: usize = 5;

    assert!(matches!(
        parse(&good[..63]),
        Err(ElfCoreHdrError::Truncated {
            need: 64,
            have: 63,
            ..
        })
    ));
    assert!(matches!(
        parse(&good[..64 + 56 * 3]),
        Err(ElfCoreHdrError::PhdrsOutOfBounds { .. })
    ));
    assert_eq!(with(&|b| b[0] = 0), Err(ElfCoreHdrError::NotElf));
    assert_eq!(with(&|b| b[4] = 1), Err(ElfCoreHdrError::WrongClass(1)));
    assert_eq!(with(&|b| b[5] = 2), Err(ElfCoreHdrError::WrongEndian(2)));
    assert_eq!(with(&|b| b[16] = 2), Err(ElfCoreHdrError::WrongType(2)));
    assert_eq!(with(&|b| b[18] = 3), Err(ElfCoreHdrError::WrongMachine(3)));
    assert_eq!(
        with(&|b| b[54] = 32),
        Err(ElfCoreHdrError::BadPhentsize(32))
    );
    assert_eq!(with(&|b| b[52] = 0), Err(ElfCoreHdrError::BadEhsize(0)));
    assert_eq!(
        with(&|b| b[56..58].copy_from_slice(&[0, 0])),
        Err(ElfCoreHdrError::NoPhdrs)
    );
    assert_eq!(
        with(&|b| b[56..58].copy_from_slice(&[0xff, 0xff])),
        Err(ElfCoreHdrError::PnXnum)
    );
    assert_eq!(
        with(&|b| b[56..58].copy_from_slice(&5000u16.to_le_bytes())),
        Err(ElfCoreHdrError::TooManyPhdrs {
            phnum: 5000,
            max: 4096
        })
    );
    // e_phnum within the cap but past the buffer.
    assert!(matches!(
        with(&|b| b[56..58].copy_from_slice(&4000u16.to_le_bytes())),
        Err(ElfCoreHdrError::PhdrsOutOfBounds { .. })
    ));
    for phoff in [good.len() as u64, u64::MAX - 10, 0, 8] {
        assert!(
            matches!(
                with(&|b| b[32..40].copy_from_slice(&phoff.to_le_bytes())),
                Err(ElfCoreHdrError::PhdrsOutOfBounds { .. })
            ),
            "e_phoff {phoff:#x}"
        );
    }

    // A PT_LOAD in the hole between the two RAM ranges.
    let err = with(&|b| patch_load(b, L0, 0x80_0000, 0x1000)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PT_LOAD 5 [0x800000-0x801000] lies outside guest RAM"
    );
    // One that starts in RAM and runs past its end.
    assert!(matches!(
        with(&|b| patch_load(b, L0 + 2, HIGH_GPA, RAM_LEN + 1)),
        Err(ElfCoreHdrError::OutsideRam { index: 7, .. })
    ));
    // Wrapping the address space.
    assert!(matches!(
        with(&|b| patch_load(b, L0, u64::MAX - 0xfff, 0x2000)),
        Err(ElfCoreHdrError::Wraps {
            kind: "PT_LOAD",
            index: 5,
            ..
        })
    ));
    // Overlapping another PT_LOAD.
    let err = with(&|b| patch_load(b, L0 + 1, 0x1000, 0x1000)).unwrap_err();
    assert!(
        matches!(
            err,
            ElfCoreHdrError::OverlappingLoads {
                first: 5,
                second: 6,
                ..
            }
        ),
        "{err}"
    );
    // Reading address and physical address disagree.
    assert!(matches!(
        with(&|b| patch_phdr(b, L0, 24, 0x1000)),
        Err(ElfCoreHdrError::OffsetNotPaddr { index: 5, .. })
    ));
    assert!(matches!(
        with(&|b| patch_phdr(b, L0, 40, 0x10)),
        Err(ElfCoreHdrError::SizeMismatch { index: 5, .. })
    ));
    // A crash-note PT_NOTE outside RAM, or wrapping.
    let err = with(&|b| patch_load(b, 1, 0x90_0000, 0x180)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PT_NOTE 1 [0x900000-0x900180] lies outside guest RAM"
    );
    assert!(matches!(
        with(&|b| patch_load(b, 1, u64::MAX, 2)),
        Err(ElfCoreHdrError::Wraps {
            kind: "PT_NOTE",
            ..
        })
    ));
    // Huge note segments, each inside RAM, adding up past the cap.
    assert!(matches!(
        with(&|b| {
            patch_load(b, 0, 0, RAM_LEN);
            patch_load(b, 1, HIGH_GPA, RAM_LEN)
        }),
        Err(ElfCoreHdrError::NotesTooLarge { .. })
    ));
    // No PT_LOAD at all: every load turned into PT_NULL.
    assert_eq!(
        with(&|b| {
            for i in L0..L0 + 3 {
                b[64 + i * 56..64 + i * 56 + 4].copy_from_slice(&0u32.to_le_bytes());
            }
        }),
        Err(ElfCoreHdrError::NoLoads)
    );
    assert!(parse(&good).is_ok(), "the unpatched header is fine");
}

#[test]
fn hostile_notes_in_guest_ram_are_rejected_before_any_file_appears() {
    let dir = test_dir("kdump-hostile-notes");
    type Scribble<'a> = &'a dyn Fn(&mut Vec<u8>);
    let cases: [(&str, Scribble); 4] = [
        ("descsz past the buffer", &|low| {
            let at = (CRASH_NOTES + STRIDE) as usize + 4;
            low[at..at + 4].copy_from_slice(&400u32.to_le_bytes());
        }),
        ("namesz overflow", &|low| {
            let at = (CRASH_NOTES + 2 * STRIDE) as usize;
            low[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        }),
        ("descsz overflow", &|low| {
            let at = (CRASH_NOTES + 2 * STRIDE) as usize + 4;
            low[at..at + 4].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
        }),
        ("spoofed host note", &|low| {
            let at = (CRASH_NOTES + 3 * STRIDE) as usize;
            low[at..at + 4].copy_from_slice(&8u32.to_le_bytes());
            low[at + 12..at + 20].copy_from_slice(b"VMMHOST\0");
        }),
    ];
    for (what, scribble) in cases {
        let (mut g, len) = kdump_guest(&[0, 1, 2, 3]);
        scribble(&mut g.low);
        // The header itself is still valid: the notes are checked on read.
        let hdr = parse_elfcorehdr(&hdr_bytes(&g, len), &layout()).expect("valid header");
        let path = dir.join("vmcore");
        let err = write_kdump(&g, &hdr, len, &path).expect_err(what);
        let WriteError::ElfCoreHdr(e) = &err else {
            panic!("{what}: {err:?}");
        };
        match e {
            ElfCoreHdrError::NoteOverrunsSegment { filesz, .. } => assert_eq!(*filesz, STRIDE),
            ElfCoreHdrError::ReservedNoteName { index: 3, name, .. } => assert_eq!(name, "VMMHOST"),
            other => panic!("{what}: {other}"),
        }
        assert!(!path.exists(), "{what}: a file was left behind");
        assert_eq!(
            std::fs::read_dir(&dir).expect("dir").count(),
            0,
            "{what}: temp file left"
        );
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_mutations_never_panic() {
    let (g, len) = kdump_guest(&[0, 1, 2, 3]);
    let good = hdr_bytes(&g, len);
    let ram_layout = layout();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut low = g.low.clone();
    let (mut parsed, mut planned) = (0, 0);
    for _ in 0..4000 {
        let mut b = good.clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() % b.len() as u64) as usize;
            b[at] ^= 1 << (rng.next() % 8);
            // Sometimes a whole interesting value instead of a bit flip.
            if rng.next().is_multiple_of(4) {
                let at = at & !7;
                let v = [0, u64::MAX, 1 << 63, RAM_LEN, HIGH_GPA - 1][(rng.next() % 5) as usize];
                if at + 8 <= b.len() {
                    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        // Scribble on the note buffers too.
        let note_at = CRASH_NOTES as usize + (rng.next() % (STRIDE * 4)) as usize;
        let saved = low[note_at];
        low[note_at] ^= 1 << (rng.next() % 8);
        if let Ok(hdr) = parse_elfcorehdr(&b, &ram_layout) {
            parsed += 1;
            let ram = [RamRegion::new(0, &low), RamRegion::new(HIGH_GPA, &g.high)];
            let input = KdumpInput {
                ram: &ram,
                cpus: &g.cpus,
                vmx: &g.vmx,
                pvpanic: None,
                elfcorehdr: (ELFCOREHDR, len as u64),
            };
            if plan_kdump_vmcore(&hdr, &input, &WriteOptions::default()).is_ok() {
                planned += 1;
            }
        }
        low[note_at] = saved;
    }
    // The mutations must exercise both outcomes, or the test proves little.
    assert!(parsed > 100 && parsed < 4000, "parsed {parsed}");
    assert!(planned > 0, "planned {planned}");
}

/// The fuzz target's fixed RAM: region 0 holds the fuzz input (elfcorehdr
/// at 0, note buffers after it), region 1 is zero.
const FUZZ_RAM: [(u64, u64); 2] = [(0, 0x1_0000), (0x10_0000, 0x1_0000)];
const FUZZ_SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fuzz/corpus/elfcorehdr/valid-2cpu"
);

/// A valid input for the `elfcorehdr` fuzz target, made by the guest's
/// builder: header at 0, two saved crash notes and a VMCOREINFO note.
fn fuzz_seed() -> Vec<u8> {
    let mut img = vec![0u8; 0x1000];
    for (cpu, at) in [(0u32, 0x400usize), (1, 0x580)] {
        let mut st = guest_abi::elfnote::ElfPrstatus::zeroed();
        st.pr_pid = cpu as i32 + 1;
        let mut n = guest_abi::elfnote::CrashNote::empty();
        n.write(&st);
        img[at..at + n.bytes.len()].copy_from_slice(&n.bytes);
    }
    let text = b"OSRELEASE=fuzz\nNUMBER(nr_cpus)=2\n";
    write_vmcoreinfo_note(&mut img[0x800..0x900], text).expect("fits");
    let ram: Vec<PhysRange> = FUZZ_RAM
        .iter()
        .map(|&(s, l)| PhysRange::new(s, l))
        .collect();
    let l = CoreHdrLayout {
        ram: &ram,
        crash_kernel: PhysRange::new(0x4000, 0x2000),
        crash_notes: &[0x400, 0x580],
        crash_note_size: 0x180,
        vmcoreinfo: PhysRange::new(0x800, 0x100),
    };
    build_elfcorehdr(&l, &mut img[..0x400]).expect("fits");
    img
}

/// The committed seed is what the builder makes today and is accepted all
/// the way through planning. `UPDATE_FUZZ_SEED=1` rewrites it.
#[test]
fn fuzz_seed_is_current_and_valid() {
    let seed = fuzz_seed();
    if std::env::var_os("UPDATE_FUZZ_SEED").is_some() {
        std::fs::write(FUZZ_SEED, &seed).expect("write seed");
    }
    let committed = std::fs::read(FUZZ_SEED).expect("seed committed (UPDATE_FUZZ_SEED=1 makes it)");
    assert_eq!(committed, seed, "stale seed: rerun with UPDATE_FUZZ_SEED=1");
    let hdr = parse_elfcorehdr(&seed, &FUZZ_RAM).expect("seed parses");
    assert_eq!((hdr.notes.len(), hdr.loads.len()), (3, 3));
    let high = vec![0u8; 0x1_0000];
    let mut low = seed.clone();
    low.resize(0x1_0000, 0);
    let ram = [RamRegion::new(0, &low), RamRegion::new(0x10_0000, &high)];
    let input = KdumpInput {
        ram: &ram,
        ..Default::default()
    };
    let plan = plan_kdump_vmcore(&hdr, &input, &WriteOptions::default()).expect("seed plans");
    assert_eq!(plan.guest_notes(), 3);
}

/// Segments of a guest's elfcorehdr that reach past guest RAM: across the
/// start or the end of a hole (as the MMIO hole splits RAM), inside it, or
/// past the end of RAM. Each is refused before anything reads guest memory.
#[test]
fn segments_across_the_ram_hole_or_past_its_end_are_refused() {
    let seed = fuzz_seed();
    let low_end = FUZZ_RAM[0].1;
    let (high, high_len) = FUZZ_RAM[1];
    assert!(parse_elfcorehdr(&seed, &FUZZ_RAM).is_ok());
    // Program headers 0..3 are the notes, 3..6 the loads.
    for (index, start, len) in [
        (3, low_end - 0x800, 0x1000),
        (3, high - 0x800, 0x1000),
        (3, high + high_len - 0x800, 0x1000),
        (3, high + high_len, 0x1000),
        (4, (low_end + high) / 2, 0x1000),
        (0, low_end - 0x10, 0x180),
        (1, high - 0x10, 0x180),
        (2, high + high_len - 0x10, 0x100),
    ] {
        let mut b = seed.clone();
        patch_load(&mut b, index, start, len);
        let result = parse_elfcorehdr(&b, &FUZZ_RAM);
        assert!(
            result.is_err(),
            "phdr {index} at {start:#x}+{len:#x} accepted: {result:?}"
        );
    }
}
