//! Per-thread seccomp filters (seccompiler): one allowlist each for the
//! main event-loop thread, the vCPU threads, the QMP threads and the dump
//! writer, installed by each thread once it reaches its steady state.
//!
//! - [`configure`] picks the level for the process (the binary's
//!   `--seccomp true|false|log`; library users get [`SeccompLevel::Off`]
//!   unless they call it or set `VMM_SECCOMP`), builds every filter once,
//!   installs the SIGSYS handler and makes glibc malloc share one arena (a
//!   new arena would make a filtered thread open `/sys/devices/system/cpu/online`).
//! - [`apply`] installs the filter for a [`ThreadKind`] on the calling
//!   thread. Filters are inherited: a thread spawned by a filtered thread
//!   runs under its parent's filter as well as its own.
//! - A forbidden call raises SIGSYS (`SECCOMP_RET_TRAP`); the handler
//!   prints `vmm: seccomp: <kind> thread made forbidden syscall N` and the
//!   process exits with status [`EXIT_BAD_SYSCALL`] (159, as Firecracker).
//!   With [`SeccompLevel::Log`] forbidden calls are allowed and logged by
//!   the kernel (`SECCOMP_RET_LOG`, visible in the audit log).
//!
//! Known limits: `clone3` takes its flags in memory, which BPF cannot read,
//! so threads that spawn threads get `ENOSYS` for it (glibc falls back to
//! `clone`, whose flags are checked: threads only, no fork); `openat` and
//! the other path calls cannot be restricted by path; `ioctl` is limited to
//! KVM's ioctl type and a few terminal/socket requests, not to single KVM
//! requests.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Exit status after a forbidden system call (Firecracker's value).
pub const EXIT_BAD_SYSCALL: i32 = 159;

/// Environment variable: the level for library users (`true`, `false`,
/// `log`), read by [`level`] when [`configure`] was not called.
pub const LEVEL_ENV: &str = "VMM_SECCOMP";

/// Test hook: a thread of this kind (`main`, `vcpu`, `api`, `dump`) makes a
/// forbidden system call right after installing its filter. Lets the tests
/// check that each filter is really enforced.
pub const FORBIDDEN_TEST_ENV: &str = "VMM_SECCOMP_TEST_FORBIDDEN";

/// Errors building or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A filter could not be built (a bug in the allowlists).
    #[error("building the {0} seccomp filter failed")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// A filter could not be compiled to BPF.
    #[error("compiling the {0} seccomp filter failed")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    /// seccomp(2) refused the filter.
    #[error("installing the {0} seccomp filter failed")]
    Install(&'static str, #[source] seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler failed")]
    Handler(#[source] std::io::Error),
    /// [`configure`] was already called with another level.
    #[error("seccomp is already configured")]
    AlreadyConfigured,
    /// Not `true`, `false` or `log`.
    #[error("invalid seccomp level '{0}' (expected true, false or log)")]
    Level(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, SeccompError>;

/// How forbidden system calls are treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompLevel {
    /// No filters.
    #[default]
    Off,
    /// Filters that allow and log forbidden calls (`SECCOMP_RET_LOG`).
    Log,
    /// Filters that end the process on a forbidden call (SIGSYS, exit 159).
    Kill,
}

impl std::str::FromStr for SeccompLevel {
    type Err = SeccompError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "true" | "on" | "kill" => Ok(SeccompLevel::Kill),
            "false" | "off" => Ok(SeccompLevel::Off),
            "log" => Ok(SeccompLevel::Log),
            other => Err(SeccompError::Level(other.to_owned())),
        }
    }
}

/// The kinds of VMM threads, each with its own allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main event loop (also rebuilds the VM on reset and writes
    /// blocking dumps for the coredump panic actions).
    Main,
    /// A vCPU thread.
    Vcpu,
    /// The QMP accept thread and each client's reader and writer.
    Api,
    /// The `dump-guest-memory` writer.
    DumpWriter,
    /// The thread that drains KVM's coalesced serial writes on a period.
    SerialDrain,
}

impl ThreadKind {
    const ALL: [ThreadKind; 5] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::DumpWriter,
        ThreadKind::SerialDrain,
    ];

    /// The name used in messages and in [`FORBIDDEN_TEST_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::DumpWriter => "dump",
            ThreadKind::SerialDrain => "serial-drain",
        }
    }

    /// Whether threads of this kind spawn threads.
    fn spawns_threads(self) -> bool {
        matches!(self, ThreadKind::Main | ThreadKind::Api)
    }
}

/// KVM's ioctl type (`KVMIO`), bits 15:8 of every KVM request number.
const KVMIO: u64 = 0xAE;
const TCGETS: u64 = 0x5401;
const TIOCGWINSZ: u64 = 0x5413;
const FIONBIO: u64 = 0x5421;

/// Calls every thread makes: memory, locks, signals, its own exit, and
/// `write` (the SIGSYS handler's message, logging, serial output); the
/// `ioctl` and `fcntl` requests each kind needs are in [`rules`]. Traced
/// from real runs (`strace -f`): boot, QMP commands and dumps, crashes
/// under every panic action, reset, quit, SIGTERM, `--serial file:`.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_restart_syscall,
    libc::SYS_sigaltstack,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_write,
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Writing a vmcore: temporary file, sparse writes, fsync, rename (or
/// unlink on failure), and `mincore` to skip untouched guest pages.
const DUMP_FILE: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_pwrite64,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mincore,
];

/// Starting a thread (glibc and std): the parent's `clone`, the child's
/// setup before it installs its own filter.
const THREAD_START: &[i64] = &[
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
];

/// What each kind adds to [`COMMON`] (besides `ioctl`, `clone` and
/// `clone3`, see [`rules`]).
fn extra_syscalls(kind: ThreadKind) -> Vec<i64> {
    match kind {
        // The event loop (epoll on eventfds, the signalfd and stdin), vCPU
        // kicks (tgkill), rebuilding the VM on reset (guest memory, irqfd
        // eventfds, the VM fd duplicated for MSIs, new vCPU threads that
        // then add their own filter), blocking dumps for the coredump panic
        // actions, and stopping the QMP server (shutdown of stuck clients,
        // unlink of the socket).
        // The kdump watchdog's timerfd is armed and disarmed here; the
        // serial-drain thread a rebuild starts inherits this filter, so its
        // sleep must pass it too.
        ThreadKind::Main => [
            &[
                libc::SYS_epoll_wait,
                libc::SYS_epoll_ctl,
                libc::SYS_eventfd2,
                libc::SYS_tgkill,
                libc::SYS_seccomp,
                libc::SYS_shutdown,
                libc::SYS_timerfd_settime,
                libc::SYS_clock_nanosleep,
                libc::SYS_nanosleep,
            ][..],
            THREAD_START,
            DUMP_FILE,
        ]
        .concat(),
        // KVM_RUN, the register reads of a capture, KVM_NMI and MSIs
        // (ioctls), serial output and eventfd writes (irqfd, mailbox).
        ThreadKind::Vcpu => Vec::new(),
        // poll on the listening socket and the stop eventfd, accept, the
        // client sockets (cloned fds, blocking mode), the client threads.
        ThreadKind::Api => [
            &[
                libc::SYS_poll,
                libc::SYS_accept4,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_shutdown,
            ][..],
            THREAD_START,
        ]
        .concat(),
        ThreadKind::DumpWriter => DUMP_FILE.to_vec(),
        // Sleeps, then replays queued serial writes (write(2) to the
        // serial backend).
        ThreadKind::SerialDrain => vec![libc::SYS_clock_nanosleep, libc::SYS_nanosleep],
    }
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompRule {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )
    .expect("argument index is below 6")])
    .expect("a rule with one condition")
}

/// The allowlist of `kind` as seccompiler rules.
fn rules(kind: ThreadKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra_syscalls(kind).iter())
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // ioctl: KVM's requests on every thread but the QMP ones; terminal
    // queries (isatty, the dump progress bar) and FIONBIO where needed.
    let mut ioctl = Vec::new();
    if kind != ThreadKind::Api {
        ioctl.push(condition(1, SeccompCmpOp::MaskedEq(0xff00), KVMIO << 8));
    }
    match kind {
        ThreadKind::Main | ThreadKind::DumpWriter => {
            ioctl.push(condition(1, SeccompCmpOp::Eq, TCGETS));
            ioctl.push(condition(1, SeccompCmpOp::Eq, TIOCGWINSZ));
        }
        ThreadKind::Api => ioctl.push(condition(1, SeccompCmpOp::Eq, FIONBIO)),
        ThreadKind::Vcpu | ThreadKind::SerialDrain => {}
    }
    rules.insert(libc::SYS_ioctl, ioctl);
    // fcntl: F_GETFD everywhere (debug builds of std check every fd they
    // close with it); duplicating fds (`try_clone`) where the QMP client
    // sockets and the VM fd for MSIs are cloned.
    let mut fcntl = vec![condition(1, SeccompCmpOp::Eq, libc::F_GETFD as u64)];
    if kind.spawns_threads() {
        fcntl.push(condition(1, SeccompCmpOp::Eq, libc::F_DUPFD_CLOEXEC as u64));
    }
    rules.insert(libc::SYS_fcntl, fcntl);
    if kind.spawns_threads() {
        // Threads only: a clone without CLONE_THREAD (a fork) is refused.
        let thread = libc::CLONE_THREAD as u64;
        rules.insert(
            libc::SYS_clone,
            vec![condition(0, SeccompCmpOp::MaskedEq(thread), thread)],
        );
        // Allowed here, answered ENOSYS by the second filter (see `build`).
        rules.insert(libc::SYS_clone3, Vec::new());
    }
    rules
}

/// The compiled filters of one kind: the allowlist, and for threads that
/// spawn threads a second filter that makes `clone3` fail with ENOSYS.
#[derive(Debug)]
struct KindFilters {
    allowlist: BpfProgram,
    no_clone3: Option<BpfProgram>,
}

fn build(kind: ThreadKind, level: SeccompLevel) -> Result<KindFilters> {
    let mismatch = match level {
        SeccompLevel::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let compile = |filter: SeccompFilter| -> Result<BpfProgram> {
        filter
            .try_into()
            .map_err(|e| SeccompError::Compile(kind.name(), e))
    };
    let allowlist = SeccompFilter::new(
        rules(kind),
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind.name(), e))?;
    let no_clone3 = if kind.spawns_threads() {
        let filter = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Build(kind.name(), e))?;
        Some(compile(filter)?)
    } else {
        None
    };
    Ok(KindFilters {
        allowlist: compile(allowlist)?,
        no_clone3,
    })
}

#[derive(Debug)]
struct Config {
    level: SeccompLevel,
    filters: BTreeMap<ThreadKind, KindFilters>,
    forbidden_test: Option<ThreadKind>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Sets the process's seccomp level; with filters on, also builds them,
/// installs the SIGSYS handler and limits glibc malloc to one arena. Call
/// before any VMM thread starts. A second call with the same level is a
/// no-op.
pub fn configure(level: SeccompLevel) -> Result<()> {
    if let Some(config) = CONFIG.get() {
        return if config.level == level {
            Ok(())
        } else {
            Err(SeccompError::AlreadyConfigured)
        };
    }
    let mut filters = BTreeMap::new();
    if level != SeccompLevel::Off {
        for kind in ThreadKind::ALL {
            filters.insert(kind, build(kind, level)?);
        }
        install_sigsys_handler()?;
        // One malloc arena for every thread: a thread that creates its own
        // arena first reads /sys/devices/system/cpu/online, which the
        // filters do not allow.
        // SAFETY: mallopt only changes malloc tuning; any value is safe.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
    let forbidden_test = std::env::var(FORBIDDEN_TEST_ENV)
        .ok()
        .and_then(|name| ThreadKind::ALL.into_iter().find(|k| k.name() == name));
    let config = Config {
        level,
        filters,
        forbidden_test,
    };
    if CONFIG.set(config).is_err() {
        return Err(SeccompError::AlreadyConfigured);
    }
    Ok(())
}

/// The process's level: what [`configure`] set, else [`LEVEL_ENV`]
/// (configured on first use), else off.
pub fn level() -> SeccompLevel {
    if let Some(config) = CONFIG.get() {
        return config.level;
    }
    let level = std::env::var(LEVEL_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    if let Err(e) = configure(level) {
        log::error!("seccomp: {e}");
    }
    CONFIG.get().map_or(SeccompLevel::Off, |c| c.level)
}

thread_local! {
    /// The calling thread's kind, for the SIGSYS message (0 = none).
    static THREAD_KIND: Cell<u8> = const { Cell::new(0) };
}

/// Installs `kind`'s filter on the calling thread (nothing when the level
/// is off). The thread keeps any filter it inherited.
pub fn apply(kind: ThreadKind) -> Result<()> {
    if level() == SeccompLevel::Off {
        return Ok(());
    }
    let config = CONFIG.get().expect("level() configured it");
    let filters = config
        .filters
        .get(&kind)
        .expect("configure built every kind");
    if let Some(no_clone3) = &filters.no_clone3 {
        seccompiler::apply_filter(no_clone3).map_err(|e| SeccompError::Install(kind.name(), e))?;
    }
    seccompiler::apply_filter(&filters.allowlist)
        .map_err(|e| SeccompError::Install(kind.name(), e))?;
    THREAD_KIND.with(|k| k.set(kind as u8 + 1));
    log::debug!("seccomp: {} filter installed", kind.name());
    if config.forbidden_test == Some(kind) {
        log::warn!(
            "seccomp: {FORBIDDEN_TEST_ENV}: {} thread calls getppid",
            kind.name()
        );
        // SAFETY: getppid has no preconditions; here it is the forbidden
        // call the test expects the filter to stop.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(())
}

/// [`apply`], logging a failure instead of returning it (for thread entry
/// points that have nowhere to report it).
pub fn apply_or_log(kind: ThreadKind) {
    if let Err(e) = apply(kind) {
        log::error!("seccomp: {}", crate::dump::error_chain(&e));
    }
}

/// Formats `n` in decimal into `buf`, returning the digits (no allocation:
/// used in the signal handler).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Offset of `si_syscall` in `siginfo_t` for SIGSYS on x86_64: after
/// `si_signo`, `si_errno`, `si_code` (padded to 16) and `si_call_addr`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // Only async-signal-safe work: a TLS read, a stack buffer, write(2) and
    // _exit(2).
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers;
    // for SIGSYS the int at SI_SYSCALL_OFFSET is si_syscall.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read()
    };
    let kind = THREAD_KIND
        .try_with(|k| k.get())
        .ok()
        .and_then(|k| ThreadKind::ALL.get(usize::from(k).checked_sub(1)?))
        .map_or("unfiltered", |k| k.name());
    let mut digits = [0u8; 20];
    let parts: [&[u8]; 5] = [
        b"vmm: seccomp: ",
        kind.as_bytes(),
        b" thread made forbidden syscall ",
        decimal(nr as u64, &mut digits),
        b"; exiting\n",
    ];
    // One write(2) for the whole line, so that other threads' output
    // cannot land in the middle of it.
    let mut line = [0u8; 128];
    let mut len = 0;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        if let Some(slot) = line.get_mut(len) {
            *slot = *byte;
            len += 1;
        }
    }
    // SAFETY: writes `len` initialised bytes of a live stack buffer.
    unsafe { libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), len) };
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(EXIT_BAD_SYSCALL) };
}

fn install_sigsys_handler() -> Result<()> {
    // SAFETY: sigaction is plain data; zeroed is a valid empty value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = sigsys_handler as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: installs a handler that only does async-signal-safe work.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_builds_at_every_level() {
        for level in [SeccompLevel::Kill, SeccompLevel::Log] {
            for kind in ThreadKind::ALL {
                let f = build(kind, level).unwrap();
                assert!(!f.allowlist.is_empty());
                assert_eq!(f.no_clone3.is_some(), kind.spawns_threads());
            }
        }
    }

    #[test]
    fn levels_parse_as_the_cli_spells_them() {
        assert_eq!("true".parse::<SeccompLevel>().unwrap(), SeccompLevel::Kill);
        assert_eq!("false".parse::<SeccompLevel>().unwrap(), SeccompLevel::Off);
        assert_eq!("log".parse::<SeccompLevel>().unwrap(), SeccompLevel::Log);
        assert!("maybe".parse::<SeccompLevel>().is_err());
    }

    #[test]
    fn only_spawning_threads_may_clone_and_only_threads() {
        for kind in ThreadKind::ALL {
            let r = rules(kind);
            assert_eq!(r.contains_key(&libc::SYS_clone), kind.spawns_threads());
            assert!(!r.contains_key(&libc::SYS_execve) && !r.contains_key(&libc::SYS_fork));
        }
        assert!(!rules(ThreadKind::Vcpu).contains_key(&libc::SYS_openat));
        assert!(!rules(ThreadKind::Api).contains_key(&libc::SYS_openat));
    }

    #[test]
    fn decimal_formats_without_allocating() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(110, &mut buf), b"110");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
