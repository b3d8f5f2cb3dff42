//! Helpers for integration tests that boot the real guest kernel through the
//! `vmm` library.
//!
//! A [`GuestRun`] runs one VM on its own thread and turns the guest's serial
//! output into a stream of lines. Tests wait on those lines (or on the VM's
//! exit) with a deadline; nothing here sleeps to synchronise.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm::{ExitReason, SerialOutput, VmConfig, Vmm, VmmHandle};

/// How long a test waits for any single guest milestone by default. Generous,
/// because CI machines are shared and the guest's CPL0 code is emulated.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Splits the guest's serial byte stream into lines and forwards them.
struct LineSender {
    partial: Vec<u8>,
    tx: Sender<String>,
}

impl Write for LineSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                self.partial.clear();
                // The receiver may be gone once a test has what it needs.
                let _ = self.tx.send(line);
            } else {
                self.partial.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A VM running on a background thread, with its serial output as lines.
pub struct GuestRun {
    lines: Receiver<String>,
    exit: Receiver<Result<ExitReason, String>>,
    handle: VmmHandle,
    thread: Option<JoinHandle<()>>,
    transcript: Vec<String>,
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
    pub fn start(mut config: VmConfig) -> Self {
        let (line_tx, lines) = mpsc::channel();
        config.serial = SerialOutput::Writer(Box::new(LineSender {
            partial: Vec::new(),
            tx: line_tx,
        }));
        let vmm = Vmm::new(config).expect("VM creation failed");
        let handle = vmm.handle();
        let (exit_tx, exit) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = exit_tx.send(vmm.run().map_err(|e| format!("{e:#}")));
        });
        Self {
            lines,
            exit,
            handle,
            thread: Some(thread),
            transcript: Vec::new(),
        }
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
