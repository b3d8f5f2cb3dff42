//! An I/O error mid-dump removes the temporary file and leaves nothing under
//! the final name. The error comes from RLIMIT_FSIZE (EFBIG), which behaves
//! like ENOSPC for the writer; this is its own test binary because the limit
//! is process-wide.

mod common;

use common::*;
use vmcore::{write_vmcore, DumpInput, RamRegion, WriteError, WriteOptions};

#[test]
fn write_error_leaves_no_file() {
    let dir = test_dir("enospc");
    let final_path = dir.join("vmcore");
    std::fs::write(&final_path, b"previous dump").expect("seed an old file");
    // 8 MiB of non-zero RAM; allow files of 1 MiB only.
    let ram_bytes = vec![0xa5u8; 8 << 20];
    // SAFETY: plain libc calls on this process: ignoring SIGXFSZ turns the
    // over-limit write into an EFBIG error instead of killing the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let g = guest(&[0], &[]);
    let ram = [RamRegion::new(0, &ram_bytes)];
    let input = DumpInput {
        ram: &ram,
        cpus: &g.cpus,
        ..Default::default()
    };
    let err = write_vmcore(&final_path, &input, &WriteOptions::default(), &mut |_| {})
        .expect_err("file size limit");
    assert!(matches!(err, WriteError::Write { .. }), "{err:?}");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("vmcore")],
        "temp file left"
    );
    assert_eq!(
        std::fs::read(&final_path).expect("old file"),
        b"previous dump",
        "final name untouched"
    );
}
