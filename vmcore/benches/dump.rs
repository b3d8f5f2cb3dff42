//! Dump speed: `cargo bench -p vmcore --bench dump`.
//!
//! Guest RAM is an anonymous mmap (vm-memory), so untouched pages really are
//! untouched. Each case is dumped three times (the first warms the page
//! cache) and the best run is reported. Columns: time to dump and fsync,
//! throughput over touched memory, the file's logical size and the bytes it
//! occupies on disk (st_blocks * 512).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmcore::{ram_regions_from_guest_memory, write_vmcore, DumpInput, WriteOptions};

const MIB: usize = 1 << 20;

struct Case {
    name: &'static str,
    guest: usize,
    touched: usize,
}

fn touch(mem: &GuestMemoryMmap, guest: usize, touched: usize) {
    use vm_memory::Bytes;
    // Spread the touched memory over the guest in 2 MiB chunks.
    let chunk = 2 * MIB;
    let chunks = touched / chunk;
    let step = guest / chunks;
    let data: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8 + 1).collect();
    for c in 0..chunks {
        mem.write_slice(&data, GuestAddress((c * step) as u64))
            .expect("touch guest memory");
    }
}

fn run(case: &Case, dir: &Path, sync: bool) -> (Duration, u64, u64) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), case.guest)])
        .expect("anonymous guest memory");
    touch(&mem, case.guest, case.touched);
    // SAFETY: no vCPUs; nothing writes `mem` while the regions live.
    let ram = unsafe { ram_regions_from_guest_memory(&mem) };
    let input = DumpInput {
        ram: &ram,
        ..Default::default()
    };
    let path = dir.join("bench.vmcore");
    let mut best = Duration::MAX;
    let mut sizes = (0, 0);
    for _ in 0..3 {
        let t = Instant::now();
        let stats = write_vmcore(
            &path,
            &input,
            &WriteOptions {
                sync,
                ..Default::default()
            },
            &mut |_| {},
        )
        .expect("dump");
        best = best.min(t.elapsed());
        assert_eq!(stats.data_bytes as usize, case.touched);
        let md = std::fs::metadata(&path).expect("stat");
        sizes = (md.len(), md.blocks() * 512);
        std::fs::remove_file(&path).expect("remove");
    }
    (best, sizes.0, sizes.1)
}

fn main() {
    // `cargo bench` passes --bench. Without it (`cargo test --all-targets`
    // runs this binary too) only the smallest case runs, as a smoke test.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmcore-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut cases = vec![
        Case {
            name: "256 MiB, 64 MiB touched",
            guest: 256 * MIB,
            touched: 64 * MIB,
        },
        Case {
            name: "1 GiB, 64 MiB touched",
            guest: 1024 * MIB,
            touched: 64 * MIB,
        },
        Case {
            name: "4 GiB, 64 MiB touched",
            guest: 4096 * MIB,
            touched: 64 * MIB,
        },
        Case {
            name: "1 GiB fully touched",
            guest: 1024 * MIB,
            touched: 1024 * MIB,
        },
    ];
    if quick {
        cases.truncate(1);
    }
    println!(
        "{:<26} {:>14} {:>10} {:>14} {:>10} {:>10} {:>10}",
        "guest", "dump+fsync ms", "MB/s", "no-fsync ms", "MB/s", "file MiB", "disk MiB"
    );
    for c in &cases {
        let (t, size, disk) = run(c, &dir, true);
        let (t_nosync, _, _) = run(c, &dir, false);
        let mbs = |t: Duration| c.touched as f64 / 1e6 / t.as_secs_f64();
        println!(
            "{:<26} {:>14.1} {:>10.0} {:>14.1} {:>10.0} {:>10} {:>10.1}",
            c.name,
            t.as_secs_f64() * 1e3,
            mbs(t),
            t_nosync.as_secs_f64() * 1e3,
            mbs(t_nosync),
            size >> 20,
            disk as f64 / MIB as f64
        );
    }
    println!("MB/s is over touched memory; best of 3 runs (the first warms the cache).");
}
