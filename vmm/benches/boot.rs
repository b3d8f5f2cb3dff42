//! Boot benchmark: time from process start to a serial line, and the VMM's
//! RSS excluding guest RAM, for 1, 4 and 8 vCPUs. Prints a table.
//!
//! `cargo bench -p vmm --bench boot`. Environment knobs:
//! - `VMM_BENCH_KERNEL`: kernel ELF (default: the embedded guest);
//! - `VMM_BENCH_LINE`: the serial text that ends a boot (default
//!   `CPUs online`);
//! - `VMM_BENCH_RUNS`: runs per vCPU count (default 20).
//!
//! Each VMM is stopped with SIGTERM after the line (it must exit 0).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

const MEMORY: &str = "256M";
const MEMORY_BYTES: u64 = 256 << 20;
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

struct Sample {
    to_line: Duration,
    vmm_rss_kib: u64,
}

fn one_boot(cpus: u32, kernel: Option<&str>, line: &str) -> Result<Sample, String> {
    let start = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.args(["run", "--cpus", &cpus.to_string(), "--memory", MEMORY]);
    if let Some(k) = kernel {
        cmd.args(["--kernel", k]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = channel();
    let wanted = line.to_string();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(&wanted) {
                let _ = tx.send(Instant::now());
                break;
            }
        }
        // Keep draining so the guest never blocks on a full pipe.
        while matches!(stdout.read(&mut buf), Ok(n) if n > 0) {}
    });
    let seen_at = rx.recv_timeout(LINE_TIMEOUT);
    let (total, guest) = common::rss_kib(child.id(), MEMORY_BYTES);
    // SAFETY: kill(2) on our own child's pid, which has not been reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let seen_at = seen_at.map_err(|_| format!("no {line:?} within {LINE_TIMEOUT:?}"))?;
    if !status.success() {
        return Err(format!("vmm exited with {status}"));
    }
    Ok(Sample {
        to_line: seen_at - start,
        vmm_rss_kib: total - guest,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let kernel = std::env::var("VMM_BENCH_KERNEL").ok();
    let line = std::env::var("VMM_BENCH_LINE").unwrap_or_else(|_| "CPUs online".into());
    let runs: usize = std::env::var("VMM_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    println!(
        "boot to {line:?}, {runs} runs each, kernel {}",
        kernel.as_deref().unwrap_or("(embedded)")
    );
    println!("| vCPUs | median ms | p95 ms | VMM RSS excl. guest RAM, MiB (median) |");
    println!("|------:|----------:|-------:|--------------------------------------:|");
    for cpus in [1, 4, 8] {
        let mut times = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..runs {
            match one_boot(cpus, kernel.as_deref(), &line) {
                Ok(s) => {
                    times.push(s.to_line.as_secs_f64() * 1e3);
                    rss.push(s.vmm_rss_kib as f64 / 1024.0);
                }
                Err(e) => {
                    eprintln!("{cpus} vCPUs: {e}");
                    std::process::exit(1);
                }
            }
        }
        times.sort_by(f64::total_cmp);
        rss.sort_by(f64::total_cmp);
        println!(
            "| {cpus:>5} | {:>9.1} | {:>6.1} | {:>37.2} |",
            percentile(&times, 0.5),
            percentile(&times, 0.95),
            percentile(&rss, 0.5)
        );
    }
}
