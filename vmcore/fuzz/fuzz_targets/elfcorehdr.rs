//! Arbitrary bytes as a guest's elfcorehdr: the parser must return a typed
//! error or a header whose every segment is inside guest RAM, never panic,
//! hang or allocate without bound. A header that parses is then planned
//! (its notes read and merged from guest RAM, its loads mapped), which is
//! everything the kdump writer does short of writing the file.
//!
//! Fixed guest RAM: 64 KiB at 0, holding the input itself (so the header's
//! PT_NOTEs can point at fuzzer-controlled notes, as in the seed), and a
//! zero 64 KiB at 1 MiB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmcore::{parse_elfcorehdr, plan_kdump_vmcore, KdumpInput, RamRegion, WriteOptions};

const LOW_LEN: usize = 0x1_0000;
const HIGH_GPA: u64 = 0x10_0000;
const RAM: [(u64, u64); 2] = [(0, LOW_LEN as u64), (HIGH_GPA, LOW_LEN as u64)];
static HIGH: [u8; LOW_LEN] = [0; LOW_LEN];

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = parse_elfcorehdr(data, &RAM) else {
        return;
    };
    // What the parser promised.
    for l in &hdr.loads {
        let end = l.paddr.checked_add(l.len).expect("parser checked wrap");
        assert!(RAM.iter().any(|&(s, n)| s <= l.paddr && end <= s + n));
    }
    let mut low = data.to_vec();
    low.resize(LOW_LEN, 0);
    let ram = [RamRegion::new(0, &low), RamRegion::new(HIGH_GPA, &HIGH)];
    let input = KdumpInput {
        ram: &ram,
        ..Default::default()
    };
    let _ = plan_kdump_vmcore(&hdr, &input, &WriteOptions::default());
});
