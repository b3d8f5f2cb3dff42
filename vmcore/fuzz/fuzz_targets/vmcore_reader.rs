//! Arbitrary bytes into the vmcore reader, checker and info: any input must
//! give a result or a typed error, never a panic, a hang or a huge
//! allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmcore::{check, info, CheckOptions, Vmcore};

fuzz_target!(|data: &[u8]| {
    let Ok(core) = Vmcore::from_bytes(data.to_vec()) else {
        return;
    };
    let report = check(&core, &CheckOptions::default());
    let _ = report.to_json();
    let _ = report.render();
    let _ = info(&core, None).render();
    let _ = core.pvpanic_log();
    let mut buf = [0u8; 256];
    for l in core.loads().iter().take(8) {
        let _ = core.read_phys(l.paddr, &mut buf);
        let _ = core.read_virt(l.vaddr, &mut buf);
    }
});
