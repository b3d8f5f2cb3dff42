//! Hostile input: every damage gives a typed error or a parse, never a panic.

mod common;

use common::*;
use vmcore::{check, info, CheckOptions, ReadError, Vmcore};

/// A small intact vmcore; `name` keeps parallel tests out of each other's
/// directories.
fn small_core(name: &str) -> Vec<u8> {
    let dir = test_dir(name);
    let mut g = guest(&[0, 1, 2, 3], &[]);
    // Keep it small: 64 KiB of RAM per region is enough for headers+notes.
    g.low.truncate(64 << 10);
    g.high.truncate(64 << 10);
    let path = dump(&g, &dir);
    std::fs::read(path).expect("read")
}

/// Parse, then exercise everything that reads through the parsed headers.
fn exercise(bytes: Vec<u8>) -> Result<(), ReadError> {
    let core = Vmcore::from_bytes(bytes)?;
    let _ = check(&core, &CheckOptions::default()).to_json();
    let _ = info(&core, None).render();
    let _ = core.pvpanic_log();
    let mut b = [0u8; 64];
    let _ = core.read_phys(0, &mut b);
    let _ = core.read_virt(u64::MAX - 8, &mut b);
    Ok(())
}

#[test]
fn truncation_at_any_header_offset_is_an_error() {
    let raw = small_core("corrupt-truncate");
    let notes_end = {
        let core = Vmcore::from_bytes(raw.clone()).expect("intact parses");
        core.loads()[0].offset as usize
    };
    for cut in 0..notes_end {
        let r = exercise(raw[..cut].to_vec());
        assert!(r.is_err(), "truncated at {cut} parsed");
    }
    // Cuts inside memory: PT_LOAD past EOF.
    for cut in [notes_end + 1, raw.len() - 1] {
        assert!(matches!(
            exercise(raw[..cut].to_vec()),
            Err(ReadError::Truncated { .. })
        ));
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let raw = small_core("corrupt-flip");
    let header_len = Vmcore::from_bytes(raw.clone()).expect("parses").loads()[0].offset as usize;
    let mut seed = 0x1234_5678_9abc_def0u64;
    for at in 0..header_len {
        for v in [0x00u8, 0xff, 0x80] {
            let mut b = raw.clone();
            b[at] ^= v ^ 0x5a;
            let _ = exercise(b);
        }
    }
    // Random multi-byte damage.
    for _ in 0..2000 {
        let mut b = raw.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % header_len;
            b[at] = (seed >> 32) as u8;
        }
        let _ = exercise(b);
    }
}

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn specific_damage_gives_specific_errors() {
    let raw = small_core("corrupt-specific");
    let mut b = raw.clone();
    b[4] = 1; // ELFCLASS32
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::WrongKind(_))
    ));
    let mut b = raw.clone();
    set_u16(&mut b, 18, 3); // EM_386
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::WrongKind(_))
    ));
    let mut b = raw.clone();
    set_u16(&mut b, 16, 2); // ET_EXEC
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::WrongKind(_))
    ));
    let mut b = raw.clone();
    set_u16(&mut b, 56, 0xfffe); // huge phnum, past EOF
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::Truncated { .. })
    ));
    let mut b = raw.clone();
    set_u16(&mut b, 56, 0xffff); // PN_XNUM with no section header
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::BadHeader(_))
    ));
    let mut b = raw.clone();
    set_u16(&mut b, 56, 0xffff);
    set_u64(&mut b, 40, raw.len() as u64 - 10); // section header past EOF
    set_u16(&mut b, 58, 64);
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::Truncated { .. })
    ));
    let mut b = raw.clone();
    set_u64(&mut b, 32, u64::MAX - 8); // e_phoff wraps
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::Truncated { .. })
    ));

    // phdr[0] is the PT_NOTE at 64: make its size run past EOF.
    let mut b = raw.clone();
    set_u64(&mut b, 64 + 32, raw.len() as u64);
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::Truncated { .. })
    ));
    // A note whose descsz runs past its segment.
    let notes_off = u64::from_le_bytes(raw[72..80].try_into().expect("8")) as usize;
    let mut b = raw.clone();
    b[notes_off + 4..notes_off + 8].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::BadNote { .. })
    ));
    // Two PT_LOADs claiming the same file bytes.
    let mut b = raw.clone();
    let off1 = u64::from_le_bytes(raw[64 + 56 + 8..64 + 56 + 16].try_into().expect("8"));
    set_u64(&mut b, 64 + 112 + 8, off1);
    assert!(matches!(Vmcore::from_bytes(b), Err(ReadError::Overlap(_))));
    // A PT_LOAD overlapping the headers.
    let mut b = raw.clone();
    set_u64(&mut b, 64 + 56 + 8, 0);
    assert!(matches!(Vmcore::from_bytes(b), Err(ReadError::Overlap(_))));
    // filesz > memsz.
    let mut b = raw.clone();
    set_u64(&mut b, 64 + 56 + 40, 1);
    assert!(matches!(
        Vmcore::from_bytes(b),
        Err(ReadError::BadHeader(_))
    ));
}

/// The `vmcore_reader` fuzz target's committed seed: a whole small vmcore
/// (4 vCPUs, 4 KiB per RAM region). `UPDATE_FUZZ_SEED=1` rewrites it.
#[test]
fn reader_fuzz_seed_is_a_valid_vmcore() {
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/vmcore_reader/small-4cpu"
    );
    if std::env::var_os("UPDATE_FUZZ_SEED").is_some() {
        let dir = test_dir("reader-seed");
        let mut g = guest(&[0, 1, 2, 3], &[]);
        g.low.truncate(4 << 10);
        g.high.truncate(4 << 10);
        let bytes = std::fs::read(dump(&g, &dir)).expect("read");
        std::fs::create_dir_all(std::path::Path::new(seed).parent().expect("dir")).expect("mkdir");
        std::fs::write(seed, bytes).expect("write seed");
    }
    let bytes = std::fs::read(seed).expect("seed committed (UPDATE_FUZZ_SEED=1 makes it)");
    assert!(bytes.len() < 32 << 10, "seed too big: {}", bytes.len());
    let core = Vmcore::from_bytes(bytes.clone()).expect("seed parses");
    assert_eq!(core.loads().len(), 2);
    assert!(exercise(bytes).is_ok());
}
