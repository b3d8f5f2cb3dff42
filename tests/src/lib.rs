//! Helpers for integration tests that boot the real guest kernel through the
//! `vmm` library.
//!
//! A [`GuestRun`] runs one VM on its own thread and turns the guest's serial
//! output into a stream of lines. Tests wait on those lines (or on the VM's
//! exit) with a deadline; nothing here sleeps to synchronise.

use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm::{ExitReason, Notification, SerialOutput, VmConfig, Vmm, VmmHandle};

/// How long a test waits for any single guest milestone by default. Generous,
/// because CI machines are shared and the guest's CPL0 code is emulated.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A VM running on a background thread, with its serial output as lines.
pub struct GuestRun {
    lines: Receiver<String>,
    exit: Receiver<Result<ExitReason, String>>,
    handle: VmmHandle,
    notifications: Receiver<Notification>,
    thread: Option<JoinHandle<()>>,
    transcript: Vec<String>,
    seen: Vec<Notification>,
    dump_dir: std::path::PathBuf,
}

/// A new empty directory under the system temporary directory, unique to
/// this process and call.
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vmm-test-{}-{what}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

impl std::fmt::Debug for GuestRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRun")
            .field("lines_seen", &self.transcript.len())
            .finish()
    }
}

impl GuestRun {
    /// Boots `config` (its serial output is replaced by a line capture).
    pub fn start(config: VmConfig) -> Self {
        Self::start_with(config, |_| {})
    }

    /// Like [`GuestRun::start`], with `setup` run on the VMM before it
    /// starts (e.g. `set_dump_dir`, `set_kdump_timeout`). Every run writes
    /// its vmcores (kdump's, fallbacks, panic actions) into its own scratch
    /// [`GuestRun::dump_dir`] (under the system temporary directory, kept
    /// after the run so a test can read what it wrote) unless `setup` picks
    /// another.
    pub fn start_with(mut config: VmConfig, setup: impl FnOnce(&mut Vmm)) -> Self {
        let (line_tx, lines) = mpsc::channel();
        // The receiver may be gone once a test has what it needs.
        config.serial = SerialOutput::lines(move |line| drop(line_tx.send(line)));
        let mut vmm = Vmm::new(config).expect("VM creation failed");
        let dump_dir = scratch_dir("dumps");
        vmm.set_dump_dir(dump_dir.clone());
        setup(&mut vmm);
        let handle = vmm.handle();
        let notifications = handle.subscribe();
        let (exit_tx, exit) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = exit_tx.send(vmm.run().map_err(|e| format!("{e:#}")));
        });
        Self {
            lines,
            exit,
            handle,
            notifications,
            thread: Some(thread),
            transcript: Vec::new(),
            seen: Vec::new(),
            dump_dir,
        }
    }

    /// The scratch directory this run's vmcores go to by default.
    pub fn dump_dir(&self) -> &std::path::Path {
        &self.dump_dir
    }

    /// Boots the embedded guest with `cpus` vCPUs and guest command line `cmdline`.
    pub fn boot(cpus: u32, cmdline: &str) -> Self {
        Self::start(VmConfig {
            cpus,
            cmdline: cmdline.to_string(),
            ..VmConfig::default()
        })
    }

    /// The VM's control handle (pause, dump, status...).
    pub fn handle(&self) -> &VmmHandle {
        &self.handle
    }

    /// Waits for a [`Notification`] (subscribed before the VM started)
    /// that satisfies `pred`, and returns it.
    pub fn wait_notification(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Notification) -> bool,
    ) -> Notification {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.notifications.recv_timeout(left) {
                Ok(n) => {
                    self.seen.push(n.clone());
                    if pred(&n) {
                        return n;
                    }
                }
                Err(_) => {
                    self.transcript.extend(self.lines.try_iter());
                    panic!("no {what} within {timeout:?}; serial:\n{}", self.dump())
                }
            }
        }
    }

    /// Every notification received so far: those the waits went through,
    /// then any that arrived since.
    pub fn notifications(&mut self) -> &[Notification] {
        self.seen.extend(self.notifications.try_iter());
        &self.seen
    }

    /// Every line seen so far.
    pub fn transcript(&self) -> &[String] {
        &self.transcript
    }

    fn dump(&self) -> String {
        self.transcript.join("\n")
    }

    /// Waits until a line satisfies `pred` and returns it. Panics, printing the
    /// transcript, when the deadline passes or the VM exits first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}; serial so far:\n{}",
                        self.dump()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let exit = self.exit.try_recv();
                    panic!(
                        "VM exited ({exit:?}) before {what}; serial:\n{}",
                        self.dump()
                    )
                }
            }
        }
    }

    /// Waits for a line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        self.wait_for(needle, DEFAULT_TIMEOUT, |l| l.contains(needle))
    }

    /// Waits for the VM to exit by itself, collecting the remaining output.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitReason, Vec<String>) {
        match self.exit.recv_timeout(timeout) {
            Ok(result) => {
                self.join();
                self.transcript.extend(self.lines.try_iter());
                match result {
                    Ok(reason) => (reason, std::mem::take(&mut self.transcript)),
                    Err(e) => panic!("VM failed: {e}; serial:\n{}", self.dump()),
                }
            }
            Err(_) => {
                self.transcript.extend(self.lines.try_iter());
                panic!(
                    "VM did not exit within {timeout:?}; serial:\n{}",
                    self.dump()
                )
            }
        }
    }

    /// Stops the VM from the host side and returns how it ended.
    pub fn stop(self) -> (ExitReason, Vec<String>) {
        self.handle.stop();
        self.wait_exit(DEFAULT_TIMEOUT)
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            t.join().expect("VM thread panicked");
        }
    }
}

impl Drop for GuestRun {
    fn drop(&mut self) {
        // A failed test must not leave a VM running in the test process.
        if self.thread.is_some() {
            self.handle.stop();
            let _ = self.exit.recv_timeout(DEFAULT_TIMEOUT);
            self.join();
        }
    }
}

/// The expected summary line for `n` CPUs coming online out of `n`.
pub fn summary(n: u32) -> String {
    format!("CPUs online: {n}/{n}")
}

/// The `vmm` binary of this build profile (`target/<profile>/vmm`), built
/// once per test process with the same cargo that runs the tests. The
/// `VMM_BIN` environment variable overrides it.
pub fn vmm_binary() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("VMM_BIN") {
            return bin.into();
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("test executable in target/<profile>/deps");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => panic!("no profile directory above {}", exe.display()),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "vmm", "--bin", "vmm", "--profile"])
            .arg(&profile)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the vmm binary");
        assert!(status.success(), "building the vmm binary failed");
        let bin = profile_dir.join("vmm");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// Runs the host tool `name` (readelf, gdb...) and returns its stdout;
/// panics with its stderr if it fails.
pub fn tool(name: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A unique path for a test's QMP socket (removed if it exists).
pub fn socket_path(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("vmm-test-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Which output stream of a [`VmmProcess`] a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// stdout: the guest console with `--serial stdio`.
    Stdout,
    /// stderr: the VMM's own messages.
    Stderr,
}

/// The real `vmm` binary running as a child process, its stdout and stderr
/// as a stream of lines, its exit status on a channel.
pub struct VmmProcess {
    pid: u32,
    lines: Receiver<(Stream, String)>,
    exit: Receiver<std::process::ExitStatus>,
    status: Option<std::process::ExitStatus>,
    transcript: Vec<(Stream, String)>,
    /// Per stream (stdout, stderr): transcript index after the last match.
    cursor: [usize; 2],
}

impl std::fmt::Debug for VmmProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmProcess")
            .field("pid", &self.pid)
            .finish()
    }
}

impl VmmProcess {
    /// Starts `vmm <args>` with stdin from /dev/null.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// [`Self::spawn`] with extra environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(vmm_binary())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the vmm binary");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let tx_out = tx.clone();
        std::thread::spawn(move || {
            for line in io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx_out.send((Stream::Stdout, line));
            }
        });
        std::thread::spawn(move || {
            for line in io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send((Stream::Stderr, line));
            }
        });
        let pid = child.id();
        let (exit_tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Self {
            pid,
            lines,
            exit,
            status: None,
            transcript: Vec::new(),
            cursor: [0; 2],
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything printed so far.
    pub fn transcript(&self) -> String {
        self.transcript
            .iter()
            .map(|(s, l)| format!("{}: {l}", if *s == Stream::Stdout { "out" } else { "err" }))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for a line on `stream` containing `needle`, after the line
    /// the previous wait on that stream matched (each stream is read in
    /// order, independently of the other); panics with the transcript on
    /// timeout or when the process ends first.
    pub fn wait_for(&mut self, stream: Stream, needle: &str, timeout: Duration) -> String {
        let which = stream as usize;
        let seen = self.transcript[self.cursor[which]..]
            .iter()
            .position(|(s, l)| *s == stream && l.contains(needle));
        if let Some(i) = seen {
            let i = self.cursor[which] + i;
            self.cursor[which] = i + 1;
            return self.transcript[i].1.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((s, line)) => {
                    self.transcript.push((s, line.clone()));
                    if s == stream && line.contains(needle) {
                        self.cursor[which] = self.transcript.len();
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "timed out after {timeout:?} waiting for {needle:?}; output:\n{}",
                    self.transcript()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "vmm ended before printing {needle:?}; output:\n{}",
                    self.transcript()
                ),
            }
        }
    }

    /// Waits for a guest console line (stdout) containing `needle`.
    pub fn wait_for_guest(&mut self, needle: &str) -> String {
        self.wait_for(Stream::Stdout, needle, DEFAULT_TIMEOUT)
    }

    /// Waits for a VMM line (stderr) containing `needle`.
    pub fn wait_for_vmm(&mut self, needle: &str) -> String {
        self.wait_for(Stream::Stderr, needle, DEFAULT_TIMEOUT)
    }

    /// Waits for the process to exit; returns its exit code (panics if it
    /// was killed by a signal or did not exit in time).
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let status = self.wait_status(timeout);
        status
            .code()
            .unwrap_or_else(|| panic!("vmm killed: {status}; output:\n{}", self.transcript()))
    }

    /// Waits for the process to end, however it ended (e.g. a SIGKILL the
    /// test sent), and collects the rest of its output.
    pub fn wait_status(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = match self.status {
            Some(s) => s,
            None => match self.exit.recv_timeout(timeout) {
                Ok(s) => {
                    self.status = Some(s);
                    s
                }
                Err(_) => panic!(
                    "vmm did not exit within {timeout:?}; output:\n{}",
                    self.transcript()
                ),
            },
        };
        // Collect what is left of the output (the pipes close at exit).
        let drain_deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(l) = self
            .lines
            .recv_timeout(drain_deadline.saturating_duration_since(Instant::now()))
        {
            self.transcript.push(l);
        }
        status
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if self.status.is_none() && self.exit.try_recv().is_err() {
            // A failed test must not leave a VMM running: kill this child
            // (by its own pid) and reap it.
            // SAFETY: kill(2) with our child's pid and SIGKILL has no memory effects.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            let _ = self.exit.recv_timeout(DEFAULT_TIMEOUT);
        }
    }
}

/// A QMP client on `socket`, with [`DEFAULT_TIMEOUT`] on every read.
pub fn qmp_connect(socket: &std::path::Path) -> qmp::QmpClient {
    qmp::QmpClient::connect_with_timeout(socket, Some(DEFAULT_TIMEOUT)).expect("QMP connect")
}

/// Reads events until one named `name` arrives (each read bounded by the
/// client's timeout).
pub fn next_event(client: &mut qmp::QmpClient, name: &str) -> qmp::EventMessage {
    loop {
        let e = client
            .next_event()
            .unwrap_or_else(|e| panic!("waiting for {name}: {e:?}"));
        if e.event == name {
            return e;
        }
    }
}

/// gdb's `info threads` and `thread apply all bt` for `vmcore` with the
/// embedded guest's symbols; asserts there is one thread (LWP) per CPU,
/// `1..=cpus`, and no more.
pub fn gdb_all_threads(vmcore: &std::path::Path, cpus: u32) -> String {
    let p = vmcore.to_str().expect("utf-8 path");
    let bt = tool(
        "gdb",
        &[
            "-nx",
            "-batch",
            "-ex",
            "info threads",
            "-ex",
            "thread apply all bt",
            vmm::GUEST_KERNEL_PATH,
            p,
        ],
    );
    for lwp in 1..=cpus {
        assert!(bt.contains(&format!("LWP {lwp}")), "LWP {lwp}:\n{bt}");
    }
    assert!(!bt.contains(&format!("LWP {}", cpus + 1)), "{bt}");
    bt
}

/// The checker's verdict for the check named `name` (panics, showing the
/// whole report, if there is none).
pub fn check_named<'a>(report: &'a vmcore::CheckReport, name: &str) -> &'a vmcore::CheckResult {
    &report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} check in\n{}", report.render()))
        .result
}
