//! Bench table against QEMU (issue 7): our VMM and `qemu-system-x86_64
//! -accel tcg` boot the same guest ELF in the same run, and one table of
//! medians with min-max spreads is printed.
//!
//! `cargo bench -p vmm --bench compare`. Environment knobs:
//! - `VMM_COMPARE_RUNS`: runs per cell (default 10);
//! - `VMM_COMPARE_ROWS`: comma-separated subset of `boot,panic,dump,nmi`
//!   (default all; RSS comes with `boot`);
//! - `VMM_COMPARE_DIR`: scratch directory for sockets and vmcores (default
//!   a fresh one under the system temp dir; each vmcore is removed after it
//!   is measured).
//!
//! The rows:
//! - **boot**: process start to the `CPUs online` serial line, 1, 4 and 8
//!   vCPUs, 256 MiB. QEMU runs multi-threaded TCG here.
//! - **panic to vmcore**: 1 vCPU, 1 GiB, guest `unknown_nmi_panic`; the
//!   clock starts when `inject-nmi` is sent over QMP (the guest panics on the
//!   unclaimed NMI). Ours: `--on-panic coredump-destroy`, stopped when the
//!   vmcore appears under its final name (written, fsynced, renamed). QEMU:
//!   `-device pvpanic -action panic=pause`, wait for `GUEST_PANICKED`, then
//!   `dump-guest-memory` (ELF, no paging) and an fsync of the file.
//! - **dump**: 4 GiB guest with `touch_mem=64M` (64 MiB of pages made
//!   non-zero), `dump-guest-memory` over QMP plus fsync; time, apparent file
//!   size and size on disk (`st_blocks`).
//! - **NMI shootdown**: guest `crash_kexec_post_notifiers crash_after_boot=PANIC` (the
//!   shootdown runs first, with or without a crash kernel, so both VMMs run
//!   the same path); the
//!   guest prints the TSC time from its first crash NMI to the last ack
//!   (`crash: NMI shootdown: <k> acked in <us> us`).
//! - **RSS overhead**: RSS at `CPUs online` (1 vCPU, 256 MiB) minus the RSS
//!   of the guest RAM mapping(s): mappings whose size is the guest memory
//!   size up to 8 MiB more (QEMU pads its RAM block).
//!
//! QEMU's multi-threaded TCG sporadically takes a #GP during the crash IPI,
//! so the panic and NMI rows run QEMU with `-accel tcg,thread=single`.
//! QEMU's KVM accelerator does not work on this host.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::json;

const QEMU: &str = "qemu-system-x86_64";
const KERNEL: &str = vmm::GUEST_KERNEL_PATH;
const MIB: u64 = 1 << 20;
const BOOT_MEM_MIB: u64 = 256;
const PANIC_MEM_MIB: u64 = 1024;
const DUMP_MEM_MIB: u64 = 4096;
const LINE_TIMEOUT: Duration = Duration::from_secs(240);
const BOOT_LINE: &str = "CPUs online";
const TOUCH_LINE: &str = "touch_mem: touched";
const SHOOTDOWN_PREFIX: &str = "crash: NMI shootdown: ";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vmm {
    Ours,
    Qemu,
}

/// How to start one guest.
struct Spec<'a> {
    vmm: Vmm,
    cpus: u32,
    mem_mib: u64,
    cmdline: &'a str,
    /// QMP socket path.
    qmp: Option<&'a Path>,
    /// Ours: `--on-panic coredump-destroy --dump-dir`; QEMU: pvpanic with
    /// `-action panic=pause`.
    panic_dump_dir: Option<&'a Path>,
    /// QEMU: `-accel tcg,thread=single`.
    single_thread: bool,
}

/// A running guest whose serial lines arrive, timestamped, on a channel.
struct Guest {
    child: Child,
    lines: Receiver<(Instant, String)>,
    transcript: Vec<String>,
}

impl Guest {
    fn start(spec: &Spec) -> Result<Self, String> {
        let mut cmd = match spec.vmm {
            Vmm::Ours => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_vmm"));
                c.args(["run", "--kernel", KERNEL, "--cpus", &spec.cpus.to_string()])
                    .args(["--memory", &format!("{}M", spec.mem_mib)])
                    .args(["--cmdline", spec.cmdline]);
                if let Some(q) = spec.qmp {
                    c.arg("--api-socket").arg(q);
                }
                if let Some(d) = spec.panic_dump_dir {
                    c.args(["--on-panic", "coredump-destroy", "--dump-dir"])
                        .arg(d);
                }
                c
            }
            Vmm::Qemu => {
                let mut c = Command::new(QEMU);
                let accel = if spec.single_thread {
                    "tcg,thread=single"
                } else {
                    "tcg"
                };
                c.args(["-accel", accel, "-smp", &spec.cpus.to_string()])
                    .args(["-m", &format!("{}M", spec.mem_mib)])
                    .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
                    .args(["-no-reboot", "-net", "none", "-kernel", KERNEL])
                    .args(["-append", spec.cmdline]);
                if let Some(q) = spec.qmp {
                    c.arg("-qmp")
                        .arg(format!("unix:{},server=on,wait=off", q.display()));
                }
                if spec.panic_dump_dir.is_some() {
                    c.args(["-device", "pvpanic", "-action", "panic=pause"]);
                }
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", spec.vmm))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            // Keeps draining after the receiver is gone so the guest never
            // blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), line));
            }
        });
        Ok(Self {
            child,
            lines,
            transcript: Vec::new(),
        })
    }

    /// Waits for a serial line containing `needle`; returns when it was read.
    fn wait_line(&mut self, needle: &str) -> Result<(Instant, String), String> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let hit = line.contains(needle);
                    self.transcript.push(line.clone());
                    if hit {
                        return Ok((at, line));
                    }
                }
                Err(_) => {
                    let tail = self.transcript.len().saturating_sub(8);
                    return Err(format!(
                        "no {needle:?} on the serial console; last lines:\n{}",
                        self.transcript[tail..].join("\n")
                    ));
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to a QMP socket, retrying while the VMM creates it.
fn qmp_connect(path: &Path) -> Result<qmp::QmpClient, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match qmp::QmpClient::connect_with_timeout(path, Some(LINE_TIMEOUT)) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(format!("QMP connect: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn qmp_exec(
    c: &mut qmp::QmpClient,
    cmd: &str,
    args: Option<serde_json::Value>,
) -> Result<(), String> {
    c.execute(cmd, args)
        .map(drop)
        .map_err(|e| format!("QMP {cmd}: {e:?}"))
}

/// Total RSS minus the RSS of the guest RAM mapping(s), in KiB.
fn rss_overhead_kib(pid: u32, mem_bytes: u64) -> u64 {
    let (total, guest) = common::rss_kib(pid, mem_bytes);
    total - guest
}

fn fsync(path: &Path) -> Result<(), String> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("fsync {}: {e}", path.display()))
}

/// The first `vmcore-*.elf` (a final name, not a temporary one) in `dir`.
fn final_vmcore(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmcore-") && n.ends_with(".elf"))
        })
}

fn boot_once(vmm: Vmm, cpus: u32) -> Result<(f64, f64), String> {
    let start = Instant::now();
    let mut g = Guest::start(&Spec {
        vmm,
        cpus,
        mem_mib: BOOT_MEM_MIB,
        cmdline: "",
        qmp: None,
        panic_dump_dir: None,
        single_thread: false,
    })?;
    let r = g.wait_line(BOOT_LINE).map(|(at, _)| {
        let rss = rss_overhead_kib(g.pid(), BOOT_MEM_MIB * MIB);
        (ms(at - start), rss as f64 / 1024.0)
    });
    g.stop();
    r
}

fn panic_once(vmm: Vmm, dir: &Path) -> Result<f64, String> {
    let sock = dir.join("panic.sock");
    let dumps = dir.join("panic-dumps");
    let _ = fs::remove_file(&sock);
    let _ = fs::remove_dir_all(&dumps);
    fs::create_dir_all(&dumps).map_err(|e| e.to_string())?;
    let mut g = Guest::start(&Spec {
        vmm,
        cpus: 1,
        mem_mib: PANIC_MEM_MIB,
        cmdline: "unknown_nmi_panic",
        qmp: Some(&sock),
        panic_dump_dir: Some(&dumps),
        single_thread: true,
    })?;
    let r = (|| {
        g.wait_line(BOOT_LINE)?;
        let mut c = qmp_connect(&sock)?;
        let t0 = Instant::now();
        qmp_exec(&mut c, "inject-nmi", None)?;
        match vmm {
            Vmm::Ours => {
                let deadline = t0 + LINE_TIMEOUT;
                loop {
                    if final_vmcore(&dumps).is_some() {
                        return Ok(ms(t0.elapsed()));
                    }
                    if Instant::now() > deadline {
                        return Err("no vmcore under its final name".to_string());
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            Vmm::Qemu => {
                loop {
                    let ev = c.next_event().map_err(|e| format!("QMP event: {e:?}"))?;
                    if ev.event == "GUEST_PANICKED" {
                        break;
                    }
                }
                let file = dumps.join("vmcore-qemu.elf");
                let proto = format!("file:{}", file.display());
                qmp_exec(
                    &mut c,
                    "dump-guest-memory",
                    Some(json!({"paging": false, "protocol": proto})),
                )?;
                fsync(&file)?;
                Ok(ms(t0.elapsed()))
            }
        }
    })();
    g.stop();
    let _ = fs::remove_dir_all(&dumps);
    r
}

struct DumpSample {
    ms: f64,
    apparent_mib: f64,
    disk_mib: f64,
}

fn dump_once(vmm: Vmm, dir: &Path) -> Result<DumpSample, String> {
    let sock = dir.join("dump.sock");
    let file = dir.join("dump-4g.elf");
    let _ = fs::remove_file(&sock);
    let _ = fs::remove_file(&file);
    let mut g = Guest::start(&Spec {
        vmm,
        cpus: 1,
        mem_mib: DUMP_MEM_MIB,
        cmdline: "touch_mem=64M",
        qmp: Some(&sock),
        panic_dump_dir: None,
        single_thread: false,
    })?;
    let r = (|| {
        g.wait_line(TOUCH_LINE)?;
        let mut c = qmp_connect(&sock)?;
        let proto = format!("file:{}", file.display());
        let t0 = Instant::now();
        qmp_exec(
            &mut c,
            "dump-guest-memory",
            Some(json!({"paging": false, "protocol": proto})),
        )?;
        fsync(&file)?;
        let elapsed = ms(t0.elapsed());
        let md = fs::metadata(&file).map_err(|e| e.to_string())?;
        Ok(DumpSample {
            ms: elapsed,
            apparent_mib: md.len() as f64 / MIB as f64,
            disk_mib: (md.blocks() * 512) as f64 / MIB as f64,
        })
    })();
    g.stop();
    let _ = fs::remove_file(&file);
    r
}

/// The guest's shootdown latency in us; `None` when it had no other CPU.
fn nmi_once(vmm: Vmm, cpus: u32) -> Result<Option<f64>, String> {
    let mut g = Guest::start(&Spec {
        vmm,
        cpus,
        mem_mib: BOOT_MEM_MIB,
        cmdline: "crash_kexec_post_notifiers crash_after_boot=PANIC",
        qmp: None,
        panic_dump_dir: None,
        single_thread: true,
    })?;
    let want = format!("{BOOT_LINE}: {cpus}/{cpus}");
    let r = g
        .wait_line(BOOT_LINE)
        .and_then(|(_, line)| match line.contains(&want) {
            true => g.wait_line(SHOOTDOWN_PREFIX),
            false => Err(format!("not every CPU came up: {line:?}")),
        })
        .and_then(|(_, line)| {
            if line.contains("no other CPU online") {
                return Ok(None);
            }
            let tail = line.split(SHOOTDOWN_PREFIX).nth(1).unwrap_or("");
            let acked: u32 = tail
                .split_whitespace()
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| format!("bad line {line:?}"))?;
            if acked + 1 != cpus {
                return Err(format!("only {acked} of {} CPUs acked: {line:?}", cpus - 1));
            }
            tail.split(" acked in ")
                .nth(1)
                .and_then(|s| s.trim_end_matches(" us").parse::<f64>().ok())
                .map(Some)
                .ok_or_else(|| format!("bad line {line:?}"))
        });
    g.stop();
    r
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "median [min-max]", or why there is no number.
fn cell(samples: &[f64], decimals: usize) -> String {
    if samples.is_empty() {
        return "-".into();
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    format!(
        "{median:.decimals$} [{:.decimals$}-{:.decimals$}]",
        s[0],
        s[s.len() - 1]
    )
}

/// Runs `f` `runs` times; the samples, or the first error as the cell.
fn collect<T>(runs: usize, mut f: impl FnMut() -> Result<T, String>) -> Result<Vec<T>, String> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        out.push(f()?);
    }
    Ok(out)
}

struct Table {
    rows: Vec<[String; 3]>,
}

impl Table {
    fn row(&mut self, name: &str, ours: String, qemu: String) {
        eprintln!("  {name}: ours {ours}, QEMU {qemu}");
        self.rows.push([name.to_string(), ours, qemu]);
    }

    fn print(&self) {
        let w0 = self.rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
        let w1 = self
            .rows
            .iter()
            .map(|r| r[1].len())
            .max()
            .unwrap_or(0)
            .max(7);
        let w2 = self
            .rows
            .iter()
            .map(|r| r[2].len())
            .max()
            .unwrap_or(0)
            .max(8);
        println!("| {:w0$} | {:w1$} | {:w2$} |", "row", "our VMM", "QEMU-TCG");
        println!(
            "|{}|{}|{}|",
            "-".repeat(w0 + 2),
            "-".repeat(w1 + 2),
            "-".repeat(w2 + 2)
        );
        for r in &self.rows {
            println!("| {:w0$} | {:>w1$} | {:>w2$} |", r[0], r[1], r[2]);
        }
    }
}

fn err_cell(e: &str) -> String {
    eprintln!("    error: {e}");
    "failed (see stderr)".into()
}

fn host_description() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cpus} host CPUs, Linux {}", kernel.trim())
}

fn qemu_version() -> Option<String> {
    let out = Command::new(QEMU).arg("--version").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

fn main() {
    let runs: usize = std::env::var("VMM_COMPARE_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
        .max(1);
    let rows = std::env::var("VMM_COMPARE_ROWS").unwrap_or_else(|_| "boot,panic,dump,nmi".into());
    let want = |r: &str| rows.split(',').any(|x| x.trim() == r);
    let dir = match std::env::var_os("VMM_COMPARE_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("vmm-compare-{}", std::process::id())),
    };
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("compare: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let Some(qemu) = qemu_version() else {
        eprintln!("compare: {QEMU} not found (apt-get install qemu-system-x86)");
        std::process::exit(1);
    };

    println!("bench table against QEMU: {runs} runs per cell, median [min-max]");
    println!("guest: {KERNEL}");
    println!("host: {}; {qemu}", host_description());
    let mut t = Table { rows: Vec::new() };

    if want("boot") {
        let mut rss: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for cpus in [1, 4, 8] {
            let mut cells = Vec::new();
            for (i, vmm) in [Vmm::Ours, Vmm::Qemu].into_iter().enumerate() {
                cells.push(match collect(runs, || boot_once(vmm, cpus)) {
                    Ok(s) => {
                        let times: Vec<f64> = s.iter().map(|x| x.0).collect();
                        if cpus == 1 {
                            rss[i] = s.iter().map(|x| x.1).collect();
                        }
                        cell(&times, 1)
                    }
                    Err(e) => err_cell(&e),
                });
            }
            let name = format!("start -> CPUs online, {cpus} vCPU(s), ms");
            t.row(&name, cells.remove(0), cells.remove(0));
        }
        t.row(
            "RSS overhead (excl. guest RAM), 1 vCPU 256 MiB, MiB",
            cell(&rss[0], 2),
            cell(&rss[1], 2),
        );
    }

    if want("panic") {
        let c: Vec<String> = [Vmm::Ours, Vmm::Qemu]
            .into_iter()
            .map(|vmm| match collect(runs, || panic_once(vmm, &dir)) {
                Ok(s) => cell(&s, 1),
                Err(e) => err_cell(&e),
            })
            .collect();
        t.row(
            "panic (inject-nmi) -> vmcore fsynced, 1 GiB, ms",
            c[0].clone(),
            c[1].clone(),
        );
    }

    if want("dump") {
        let mut cells: Vec<[String; 3]> = Vec::new();
        for vmm in [Vmm::Ours, Vmm::Qemu] {
            cells.push(match collect(runs, || dump_once(vmm, &dir)) {
                Ok(s) => [
                    cell(&s.iter().map(|x| x.ms).collect::<Vec<_>>(), 1),
                    cell(&s.iter().map(|x| x.apparent_mib).collect::<Vec<_>>(), 1),
                    cell(&s.iter().map(|x| x.disk_mib).collect::<Vec<_>>(), 1),
                ],
                Err(e) => {
                    let c = err_cell(&e);
                    [c.clone(), c.clone(), c]
                }
            });
        }
        let [o, q] = [cells.remove(0), cells.remove(0)];
        let [o0, o1, o2] = o;
        let [q0, q1, q2] = q;
        t.row("dump 4 GiB, 64 MiB touched: time, ms", o0, q0);
        t.row("dump 4 GiB, 64 MiB touched: file size, MiB", o1, q1);
        t.row("dump 4 GiB, 64 MiB touched: on disk, MiB", o2, q2);
    }

    if want("nmi") {
        for cpus in [1, 8, 32, 64] {
            let c: Vec<String> = [Vmm::Ours, Vmm::Qemu]
                .into_iter()
                .map(|vmm| match collect(runs, || nmi_once(vmm, cpus)) {
                    Ok(s) if s.iter().all(Option::is_none) => "no other CPU".into(),
                    Ok(s) => cell(&s.into_iter().flatten().collect::<Vec<_>>(), 0),
                    Err(e) => err_cell(&e),
                })
                .collect();
            let name = format!("NMI shootdown, {cpus} vCPU(s), us");
            t.row(&name, c[0].clone(), c[1].clone());
        }
    }

    if std::env::var_os("VMM_COMPARE_DIR").is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
    println!();
    t.print();
    println!();
    println!("QEMU: multi-threaded TCG for the boot and dump rows; `-accel tcg,thread=single`");
    println!("for the panic and NMI rows (MTTCG takes a sporadic #GP during the crash IPI).");
}
