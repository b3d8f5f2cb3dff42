//! One vCPU: its KVM setup, its thread's run loop, and the controls other
//! threads use to pause, resume, stop it or inject an NMI.
//!
//! The run loop is a small state machine ([`VcpuState`]). Every KVM exit
//! goes through [`handle_kvm_exit`], which hands port and MMIO accesses to
//! the buses and never names a port.
//!
//! Requests from other threads are flags plus a *kick*: the requester stores
//! 1 in the vCPU's `kvm_run.immediate_exit` and sends it [`kick_signal`].
//! A vCPU inside `KVM_RUN` returns `EINTR`; one about to enter it returns at
//! once because of `immediate_exit`; one before its check sees the flag.
//! `KVM_NMI` is issued by the vCPU thread itself, since vCPU ioctls block
//! while that vCPU is in `KVM_RUN`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error, info, warn};

use crate::boot::pvh;
use vmcore::CpuState;

/// Errors setting up or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A vCPU setup ioctl failed.
    #[error("vcpu setup failed: {0}")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
    /// `KVM_RUN` failed with an error other than EINTR/EAGAIN.
    #[error("KVM_RUN failed")]
    Run(#[source] kvm_ioctls::Error),
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    #[error("triple fault (KVM_EXIT_SHUTDOWN)")]
    TripleFault,
    /// KVM could not emulate or handle something (KVM_EXIT_INTERNAL_ERROR).
    #[error("KVM internal error (KVM_EXIT_INTERNAL_ERROR)")]
    InternalError,
    /// VM entry failed (KVM_EXIT_FAIL_ENTRY).
    #[error("VM entry failed (KVM_EXIT_FAIL_ENTRY, hardware reason {0:#x})")]
    FailEntry(u64),
    /// An exit this VMM does not expect with an in-kernel irqchip.
    #[error("unexpected exit {0}")]
    UnexpectedExit(String),
    /// The kick signal could not be installed.
    #[error("installing the vcpu kick signal handler failed")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The vCPU thread could not be spawned.
    #[error("spawning the vcpu thread failed")]
    Spawn(#[source] std::io::Error),
}

/// What the run loop does after an exit was handled.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuEmulation {
    /// Handled; enter the guest again.
    Handled,
    /// `KVM_RUN` was interrupted (a kick): look at the requests.
    Interrupted,
}

/// Counters of accesses no device claimed.
#[derive(Debug, Default)]
pub struct ExitStats {
    /// Port reads no device claimed (answered with all-ones).
    pub unhandled_pio_reads: AtomicU64,
    /// Port writes no device claimed (dropped).
    pub unhandled_pio_writes: AtomicU64,
    /// MMIO reads no device claimed (answered with all-ones).
    pub unhandled_mmio_reads: AtomicU64,
    /// MMIO writes no device claimed (dropped).
    pub unhandled_mmio_writes: AtomicU64,
}

/// What [`handle_kvm_exit`] needs: the buses and where to count.
#[derive(Clone, Debug)]
pub struct ExitContext {
    /// The vCPU handling the exit.
    pub vcpu: u32,
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Shared counters.
    pub stats: Arc<ExitStats>,
    /// COM1's coalesced transmit writes, replayed before every exit.
    pub coalesced: Option<Arc<crate::coalesced_pio::CoalescedPio>>,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Dispatches one KVM exit. Unclaimed reads return all-ones and unclaimed
/// writes are dropped, both counted and logged at debug level.
///
/// `pio_size` is the element size of a port I/O exit (`kvm_run.io.size`):
/// string I/O (`rep ins/outs`) arrives as several elements in one exit, and
/// each is dispatched as its own access to the same port.
pub fn handle_kvm_exit(
    exit: VcpuExit<'_>,
    pio_size: usize,
    ctx: &ExitContext,
) -> Result<VcpuEmulation, VcpuError> {
    let element = |len: usize| {
        if pio_size == 0 || !len.is_multiple_of(pio_size) {
            len.max(1)
        } else {
            pio_size
        }
    };
    match exit {
        VcpuExit::IoIn(port, data) => {
            let size = element(data.len());
            for chunk in data.chunks_mut(size) {
                if !ctx.pio.read(ctx.vcpu, u64::from(port), chunk) {
                    chunk.fill(0xff);
                    count(&ctx.stats.unhandled_pio_reads);
                    debug!("vcpu {}: unhandled in {port:#x} ({size} bytes)", ctx.vcpu);
                }
            }
            Ok(VcpuEmulation::Handled)
        }
        VcpuExit::IoOut(port, data) => {
            for chunk in data.chunks(element(data.len())) {
                if !ctx.pio.write(ctx.vcpu, u64::from(port), chunk) {
                    count(&ctx.stats.unhandled_pio_writes);
                    debug!("vcpu {}: unhandled out {port:#x} <- {chunk:02x?}", ctx.vcpu);
                }
            }
            Ok(VcpuEmulation::Handled)
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(ctx.vcpu, addr, data) {
                data.fill(0xff);
                count(&ctx.stats.unhandled_mmio_reads);
                debug!("vcpu {}: unhandled mmio read {addr:#x}", ctx.vcpu);
            }
            Ok(VcpuEmulation::Handled)
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(ctx.vcpu, addr, data) {
                count(&ctx.stats.unhandled_mmio_writes);
                debug!(
                    "vcpu {}: unhandled mmio write {addr:#x} <- {data:02x?}",
                    ctx.vcpu
                );
            }
            Ok(VcpuEmulation::Handled)
        }
        VcpuExit::Intr => Ok(VcpuEmulation::Interrupted),
        // With the in-kernel irqchip these are informational.
        VcpuExit::Hlt | VcpuExit::IoapicEoi(_) | VcpuExit::IrqWindowOpen => {
            Ok(VcpuEmulation::Handled)
        }
        VcpuExit::Shutdown => Err(VcpuError::TripleFault),
        VcpuExit::InternalError => Err(VcpuError::InternalError),
        VcpuExit::FailEntry(reason, _cpu) => Err(VcpuError::FailEntry(reason)),
        other => Err(VcpuError::UnexpectedExit(format!("{other:?}"))),
    }
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal's only job is to make KVM_RUN return EINTR.
}

/// Installs the no-op kick handler, once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
            .map_err(VcpuError::Signal);
    });
    result
}

/// The request a vCPU's controller has made of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Stop,
}

thread_local! {
    /// The control of the vCPU this thread runs, if it is a vCPU thread.
    static CURRENT_VCPU: std::cell::RefCell<Option<Arc<VcpuControl>>> =
        const { std::cell::RefCell::new(None) };
}

/// Called while a vCPU thread handles an exit (a device emitting an event
/// on it): that vCPU parks before it enters the guest again, so the guest
/// does not run one more instruction on it. QEMU stops the vCPU that wrote
/// pvpanic PANICKED the same way, from its own thread, before the main loop
/// stops the others. Does nothing on any other thread.
pub fn pause_current_vcpu() {
    CURRENT_VCPU.with(|c| {
        if let Some(control) = c.borrow().as_ref() {
            // No kick (and no tgkill, which the vCPU filter refuses): this
            // thread sees the request before its next KVM_RUN.
            control.record_request(|s| {
                if s.request == Request::Run {
                    s.request = Request::Pause;
                }
            });
        }
    });
}

/// What a vCPU thread is doing, as other threads see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRunState {
    /// Not started yet, or running guest code.
    Running,
    /// Parked until resumed.
    Paused,
    /// The thread has left its loop.
    Exited,
}

/// Where to kick a running vCPU thread.
struct KickTarget {
    thread: libc::pthread_t,
    immediate_exit: *const AtomicU8,
}

// SAFETY: the pointer is only dereferenced under `VcpuControl::kick`'s lock,
// and the vCPU thread clears the target (under that lock) before its kvm_run
// mapping goes away; pthread_t is a plain thread id.
unsafe impl Send for KickTarget {}

#[derive(Debug)]
struct ControlState {
    request: Request,
    nmi_pending: bool,
    /// Where to send this vCPU's registers, read on its own thread.
    capture: Option<Sender<Result<CpuState, String>>>,
    observed: VcpuRunState,
}

/// The handle other threads hold on one vCPU.
pub struct VcpuControl {
    id: u32,
    state: Mutex<ControlState>,
    changed: Condvar,
    pending: AtomicBool,
    kick: Mutex<Option<KickTarget>>,
    tid: AtomicU64,
}

impl std::fmt::Debug for VcpuControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuControl")
            .field("id", &self.id)
            .field("state", &*self.lock())
            .finish()
    }
}

impl VcpuControl {
    /// Controls for vCPU `id`, which starts out to run.
    pub fn new(id: u32) -> Self {
        Self {
            id,
            state: Mutex::new(ControlState {
                request: Request::Run,
                nmi_pending: false,
                capture: None,
                observed: VcpuRunState::Running,
            }),
            changed: Condvar::new(),
            pending: AtomicBool::new(false),
            kick: Mutex::new(None),
            tid: AtomicU64::new(0),
        }
    }

    /// The vCPU's index.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The host thread id (TID) running this vCPU, 0 before it started.
    pub fn thread_id(&self) -> u64 {
        self.tid.load(Ordering::Relaxed)
    }

    /// What the vCPU thread last reported.
    pub fn run_state(&self) -> VcpuRunState {
        self.lock().observed
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request(&self, f: impl FnOnce(&mut ControlState)) {
        self.record_request(f);
        self.kick();
    }

    /// Records a request without kicking: for the vCPU's own thread, which
    /// looks at its requests before it enters the guest again.
    fn record_request(&self, f: impl FnOnce(&mut ControlState)) {
        {
            let mut st = self.lock();
            f(&mut st);
        }
        self.pending.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Makes the vCPU leave `KVM_RUN` and look at its requests.
    fn kick(&self) {
        let target = self.kick.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = target.as_ref() {
            // SAFETY: the target is only set while the vCPU's kvm_run mapping
            // is alive (see `KickTarget`); AtomicU8 has u8's layout.
            unsafe { (*t.immediate_exit).store(1, Ordering::SeqCst) };
            // SAFETY: the thread is alive while the target is set; a signal
            // with an installed handler only interrupts its syscall.
            let rc = unsafe { libc::pthread_kill(t.thread, kick_signal()) };
            if rc != 0 {
                warn!("vcpu {}: kick failed: errno {rc}", self.id);
            }
        }
    }

    /// Asks the vCPU to park.
    pub fn request_pause(&self) {
        self.request(|s| {
            if s.request == Request::Run {
                s.request = Request::Pause;
            }
        });
    }

    /// Lets a parked vCPU run again.
    pub fn request_resume(&self) {
        self.request(|s| {
            if s.request == Request::Pause {
                s.request = Request::Run;
            }
        });
    }

    /// Asks the vCPU thread to leave its loop.
    pub fn request_stop(&self) {
        self.request(|s| s.request = Request::Stop);
    }

    /// Asks the vCPU thread to inject an NMI into its vCPU.
    pub fn request_nmi(&self) {
        self.request(|s| s.nmi_pending = true);
    }

    /// Asks the vCPU thread to read its registers (REGS, SREGS, the FS/GS/
    /// KERNEL_GS base and EFER MSRs, the LAPIC ID) for a dump. The answer
    /// arrives on the returned channel; the channel closes unanswered if
    /// the thread exits first. Meant for a paused vCPU, whose state then
    /// stays as read until it is resumed.
    pub fn request_capture(&self) -> Receiver<Result<CpuState, String>> {
        let (tx, rx) = channel();
        self.request(|s| {
            // An exited thread would never answer; dropping `tx` says so.
            if s.observed != VcpuRunState::Exited {
                s.capture = Some(tx);
            }
        });
        rx
    }

    /// Waits until the vCPU is parked or gone, up to `timeout`.
    pub fn wait_paused(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s != VcpuRunState::Running)
    }

    /// Waits until the vCPU is running (or gone), up to `timeout`.
    pub fn wait_running(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s != VcpuRunState::Paused)
    }

    fn wait_for(&self, timeout: Duration, done: impl Fn(VcpuRunState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while !done(st.observed) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    fn set_observed(&self, state: VcpuRunState) {
        self.lock().observed = state;
        self.changed.notify_all();
    }
}

/// A guest-caused stop of one vCPU, with where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuFault {
    /// The vCPU.
    pub vcpu: u32,
    /// What happened.
    pub reason: String,
    /// Guest RIP.
    pub rip: u64,
    /// Guest RSP.
    pub rsp: u64,
    /// Guest CR3.
    pub cr3: u64,
}

/// Called by a vCPU thread when its guest faulted.
pub type FaultReporter = Arc<dyn Fn(VcpuFault) + Send + Sync>;

/// The vCPU thread's states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Entering the guest.
    Running,
    /// Parked on the control's condition variable.
    Paused,
    /// Leaving the loop.
    Exited,
}

// x86 MSRs set at boot, as Firecracker does.
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_EFER: u32 = 0xc000_0080;
const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRBACK: u64 = 6;

fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
}

fn msr(index: u32) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        ..Default::default()
    }
}

// Local APIC registers and LVT delivery modes.
const APIC_ID: usize = 0x20;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = &lapic.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, off: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[off + i] = *b as libc::c_char;
    }
}

/// LINT0 to ExtINT (the PIC) and LINT1 to NMI, as a PC BIOS leaves them.
fn set_lint(lapic: &mut kvm_lapic_state) {
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
}

const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

/// A configured vCPU, ready to be moved to its thread.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
}

impl Vcpu {
    /// Sets CPUID, MSRs, FPU and LAPIC; for the BSP also the PVH entry
    /// registers. APs are left in KVM's wait-for-SIPI state.
    pub fn configure(
        fd: VcpuFd,
        id: u32,
        cpuid: &CpuId,
        bsp_entry: Option<u64>,
    ) -> Result<Self, VcpuError> {
        fd.set_cpuid2(cpuid)
            .map_err(|e| VcpuError::Setup("KVM_SET_CPUID2", e))?;
        let msrs = Msrs::from_entries(&boot_msrs()).expect("a handful of MSRs fit");
        let written = fd
            .set_msrs(&msrs)
            .map_err(|e| VcpuError::Setup("KVM_SET_MSRS", e))?;
        if written != msrs.as_slice().len() {
            warn!(
                "vcpu {id}: KVM accepted {written} of {} boot MSRs",
                msrs.as_slice().len()
            );
        }
        let fpu = kvm_fpu {
            fcw: FPU_CONTROL_WORD,
            mxcsr: MXCSR_DEFAULT,
            ..Default::default()
        };
        fd.set_fpu(&fpu)
            .map_err(|e| VcpuError::Setup("KVM_SET_FPU", e))?;
        let mut lapic = fd
            .get_lapic()
            .map_err(|e| VcpuError::Setup("KVM_GET_LAPIC", e))?;
        set_lint(&mut lapic);
        fd.set_lapic(&lapic)
            .map_err(|e| VcpuError::Setup("KVM_SET_LAPIC", e))?;
        if let Some(entry) = bsp_entry {
            let sregs = fd
                .get_sregs()
                .map_err(|e| VcpuError::Setup("KVM_GET_SREGS", e))?;
            fd.set_sregs(&pvh::bsp_sregs(sregs))
                .map_err(|e| VcpuError::Setup("KVM_SET_SREGS", e))?;
            fd.set_regs(&pvh::bsp_regs(entry))
                .map_err(|e| VcpuError::Setup("KVM_SET_REGS", e))?;
        }
        Ok(Self { fd, id })
    }

    /// Runs the vCPU on a new thread named `vcpu<N>`.
    pub fn spawn(
        self,
        control: Arc<VcpuControl>,
        ctx: ExitContext,
        faults: FaultReporter,
    ) -> Result<std::thread::JoinHandle<()>, VcpuError> {
        install_kick_handler()?;
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run_thread(&control, &ctx, &faults))
            .map_err(VcpuError::Spawn)
    }

    fn run_thread(mut self, control: &Arc<VcpuControl>, ctx: &ExitContext, faults: &FaultReporter) {
        unblock_kick_signal();
        CURRENT_VCPU.with(|c| *c.borrow_mut() = Some(control.clone()));
        // SAFETY: gettid has no preconditions.
        control
            .tid
            .store(unsafe { libc::gettid() } as u64, Ordering::Relaxed);
        let immediate_exit = std::ptr::from_mut(&mut self.fd.get_kvm_run().immediate_exit)
            .cast::<AtomicU8>()
            .cast_const();
        *control.kick.lock().unwrap_or_else(|p| p.into_inner()) = Some(KickTarget {
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
            immediate_exit,
        });

        // Steady state: the vCPU is set up and reachable by kicks.
        crate::seccomp::apply_or_log(crate::seccomp::ThreadKind::Vcpu);
        let mut state = VcpuState::Running;
        while state != VcpuState::Exited {
            state = match state {
                VcpuState::Running => self.run_once(control, ctx, faults, immediate_exit),
                VcpuState::Paused => self.paused(control),
                VcpuState::Exited => VcpuState::Exited,
            };
        }
        // No kicks after this point: the kvm_run mapping and thread go away.
        *control.kick.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // A capture nobody will answer: close its channel.
        control.lock().capture = None;
        control.set_observed(VcpuRunState::Exited);
        debug!("vcpu {}: thread exiting", self.id);
    }

    /// Applies pending requests; returns the state they lead to.
    fn apply_requests(&mut self, control: &VcpuControl) -> VcpuState {
        let mut st = control.lock();
        if std::mem::take(&mut st.nmi_pending) {
            if let Err(e) = self.fd.nmi() {
                error!("vcpu {}: KVM_NMI failed: {e}", self.id);
            }
        }
        if let Some(reply) = st.capture.take() {
            // The requester may have given up waiting; nothing to do then.
            let _ = reply.send(self.capture_state());
        }
        match st.request {
            Request::Run => VcpuState::Running,
            Request::Pause => VcpuState::Paused,
            Request::Stop => VcpuState::Exited,
        }
    }

    fn run_once(
        &mut self,
        control: &VcpuControl,
        ctx: &ExitContext,
        faults: &FaultReporter,
        immediate_exit: *const AtomicU8,
    ) -> VcpuState {
        let io_size = std::ptr::from_mut(&mut self.fd.get_kvm_run().__bindgen_anon_1)
            .cast::<kvm_bindings::kvm_run__bindgen_ty_1__bindgen_ty_4>()
            .cast_const();
        // Clear the kick before looking at requests, so a request made after
        // this point either is seen below or makes KVM_RUN return at once.
        // SAFETY: points into this thread's own live kvm_run mapping.
        unsafe { (*immediate_exit).store(0, Ordering::SeqCst) };
        if control.pending.swap(false, Ordering::SeqCst) {
            let next = self.apply_requests(control);
            if next != VcpuState::Running {
                return next;
            }
        }
        let result = self.fd.run();
        // Writes KVM queued (in order, before this exit) reach the devices
        // before the exit itself is handled.
        if let Some(ring) = &ctx.coalesced {
            ring.drain(ctx.vcpu, &ctx.pio);
        }
        let result = match result {
            Ok(exit) => {
                // SAFETY: `io_size` points into this vCPU's live kvm_run
                // mapping; the field is plain bytes, and KVM wrote it before
                // returning from KVM_RUN. It is only meaningful for I/O
                // exits, the only ones that use it.
                let pio_size = usize::from(unsafe { std::ptr::addr_of!((*io_size).size).read() });
                handle_kvm_exit(exit, pio_size, ctx)
            }
            Err(e) if e.errno() == libc::EINTR => Ok(VcpuEmulation::Interrupted),
            // An AP's KVM_RUN returns EAGAIN on INIT; it waits for SIPI next.
            Err(e) if e.errno() == libc::EAGAIN => Ok(VcpuEmulation::Handled),
            Err(e) => Err(VcpuError::Run(e)),
        };
        match result {
            Ok(_) => VcpuState::Running,
            Err(e) => {
                let fault = self.describe_fault(&e);
                // The main loop reports it to the user; this is for logs.
                info!(
                    "vcpu {}: {} at RIP={:#x} RSP={:#x} CR3={:#x}",
                    fault.vcpu, fault.reason, fault.rip, fault.rsp, fault.cr3
                );
                faults(fault);
                // Parked, not gone: a dump of the faulted VM still needs this
                // vCPU's registers. Only a stop (or a rebuild) ends it.
                let mut st = control.lock();
                if st.request == Request::Run {
                    st.request = Request::Pause;
                }
                VcpuState::Paused
            }
        }
    }

    /// Completes a pending port/MMIO read (KVM finishes it on the next
    /// `KVM_RUN`, advancing RIP), then reads the registers a vmcore needs.
    fn capture_state(&mut self) -> Result<CpuState, String> {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => debug!("vcpu {}: completing I/O before capture: {e}", self.id),
            Ok(_) => debug!("vcpu {}: unexpected exit completing I/O", self.id),
        }
        self.fd.set_kvm_immediate_exit(0);
        let regs = self
            .fd
            .get_regs()
            .map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        let lapic = self
            .fd
            .get_lapic()
            .map_err(|e| format!("KVM_GET_LAPIC: {e}"))?;
        let mut msrs = Msrs::from_entries(&[
            msr(MSR_FS_BASE),
            msr(MSR_GS_BASE),
            msr(MSR_KERNEL_GS_BASE),
            msr(MSR_EFER),
        ])
        .expect("four MSRs fit");
        let read = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(|e| format!("KVM_GET_MSRS: {e}"))?;
        let value = |index: u32| {
            msrs.as_slice()[..read]
                .iter()
                .find(|m| m.index == index)
                .map(|m| m.data)
        };
        let apic_id = lapic_reg(&lapic, APIC_ID) >> 24;
        let mut cpu = CpuState::from_kvm(
            self.id,
            apic_id,
            &regs,
            &sregs,
            value(MSR_KERNEL_GS_BASE).unwrap_or(0),
        );
        // The MSRs are authoritative; the segment caches only match them in
        // 64-bit mode.
        cpu.fs_base = value(MSR_FS_BASE).unwrap_or(cpu.fs_base);
        cpu.gs_base = value(MSR_GS_BASE).unwrap_or(cpu.gs_base);
        cpu.efer = value(MSR_EFER).unwrap_or(cpu.efer);
        Ok(cpu)
    }

    fn paused(&mut self, control: &VcpuControl) -> VcpuState {
        control.set_observed(VcpuRunState::Paused);
        let mut st = control.lock();
        while st.request == Request::Pause && !st.nmi_pending && st.capture.is_none() {
            st = control.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        drop(st);
        let next = self.apply_requests(control);
        if next == VcpuState::Running {
            control.set_observed(VcpuRunState::Running);
        }
        next
    }

    fn describe_fault(&mut self, error: &VcpuError) -> VcpuFault {
        let mut reason = error.to_string();
        if matches!(error, VcpuError::InternalError) {
            let run = self.fd.get_kvm_run();
            // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so the
            // `internal` member of the union is the one KVM filled.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            reason = format!(
                "{reason}, suberror {} ({})",
                internal.suberror,
                internal_error_name(internal.suberror)
            );
        }
        let regs = self.fd.get_regs().unwrap_or_default();
        let sregs = self.fd.get_sregs().unwrap_or_default();
        VcpuFault {
            vcpu: self.id,
            reason,
            rip: regs.rip,
            rsp: regs.rsp,
            cr3: sregs.cr3,
        }
    }
}

/// KVM_INTERNAL_ERROR_* suberror names (linux/kvm.h).
fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exception",
        3 => "event delivery",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

fn unblock_kick_signal() {
    if let Err(e) = vmm_sys_util::signal::unblock_signal(kick_signal()) {
        warn!("cannot unblock the vcpu kick signal: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::{Access, BusDevice};

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>, u32)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, access: Access, data: &mut [u8]) {
            data.fill(0x42 + access.offset as u8);
        }
        fn write(&mut self, access: Access, data: &[u8]) {
            self.writes
                .push((access.offset, data.to_vec(), access.vcpu));
        }
    }

    fn ctx() -> (ExitContext, Arc<Mutex<Recorder>>) {
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let mut pio = Bus::new();
        pio.insert(rec.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(rec.clone(), 0xd000_0000, 0x1000).unwrap();
        (
            ExitContext {
                vcpu: 2,
                pio: Arc::new(pio),
                mmio: Arc::new(mmio),
                stats: Arc::default(),
                coalesced: None,
            },
            rec,
        )
    }

    #[test]
    fn port_io_goes_to_the_bus() {
        let (ctx, rec) = ctx();
        let out = [b'H'];
        assert_eq!(
            handle_kvm_exit(VcpuExit::IoOut(0x3f8, &out), 1, &ctx).unwrap(),
            VcpuEmulation::Handled
        );
        let mut data = [0u8];
        handle_kvm_exit(VcpuExit::IoIn(0x3fd, &mut data), 1, &ctx).unwrap();
        assert_eq!(data, [0x47]);
        assert_eq!(rec.lock().unwrap().writes, vec![(0, vec![b'H'], 2)]);
    }

    #[test]
    fn string_io_is_dispatched_element_by_element() {
        let (ctx, rec) = ctx();
        // rep outsb of "ok" to COM1: two 1-byte writes to the same port.
        handle_kvm_exit(VcpuExit::IoOut(0x3f8, b"ok"), 1, &ctx).unwrap();
        assert_eq!(
            rec.lock().unwrap().writes,
            vec![(0, vec![b'o'], 2), (0, vec![b'k'], 2)]
        );
        // rep insw from an unclaimed port: each word counted.
        let mut words = [0u8; 6];
        handle_kvm_exit(VcpuExit::IoIn(0x80, &mut words), 2, &ctx).unwrap();
        assert_eq!(words, [0xff; 6]);
        assert_eq!(ctx.stats.unhandled_pio_reads.load(Ordering::Relaxed), 3);
        // A size that does not divide the data falls back to one access.
        handle_kvm_exit(VcpuExit::IoOut(0x80, &[1, 2, 3]), 2, &ctx).unwrap();
        assert_eq!(ctx.stats.unhandled_pio_writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_are_counted() {
        let (ctx, rec) = ctx();
        let mut data = [0u8; 4];
        handle_kvm_exit(VcpuExit::IoIn(0x80, &mut data), 4, &ctx).unwrap();
        assert_eq!(data, [0xff; 4]);
        handle_kvm_exit(VcpuExit::IoOut(0x80, &[1]), 1, &ctx).unwrap();
        // Straddling the end of a device is unclaimed too.
        let mut word = [0u8; 2];
        handle_kvm_exit(VcpuExit::IoIn(0x3ff, &mut word), 2, &ctx).unwrap();
        assert_eq!(word, [0xff; 2]);
        assert_eq!(ctx.stats.unhandled_pio_reads.load(Ordering::Relaxed), 2);
        assert_eq!(ctx.stats.unhandled_pio_writes.load(Ordering::Relaxed), 1);
        assert!(rec.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn mmio_goes_to_the_bus_and_unclaimed_mmio_is_counted() {
        let (ctx, rec) = ctx();
        handle_kvm_exit(VcpuExit::MmioWrite(0xd000_0010, &[1, 2, 3, 4]), 0, &ctx).unwrap();
        let mut data = [0u8; 8];
        handle_kvm_exit(VcpuExit::MmioRead(0xd000_0001, &mut data), 0, &ctx).unwrap();
        assert_eq!(data, [0x43; 8]);
        handle_kvm_exit(VcpuExit::MmioRead(0xfed0_0000, &mut data), 0, &ctx).unwrap();
        assert_eq!(data, [0xff; 8]);
        handle_kvm_exit(VcpuExit::MmioWrite(0xfed0_0000, &[0]), 0, &ctx).unwrap();
        assert_eq!(
            rec.lock().unwrap().writes,
            vec![(0x10, vec![1, 2, 3, 4], 2)]
        );
        assert_eq!(ctx.stats.unhandled_mmio_reads.load(Ordering::Relaxed), 1);
        assert_eq!(ctx.stats.unhandled_mmio_writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn guest_faults_are_errors_not_panics() {
        let (ctx, _) = ctx();
        assert!(matches!(
            handle_kvm_exit(VcpuExit::Shutdown, 0, &ctx),
            Err(VcpuError::TripleFault)
        ));
        assert!(matches!(
            handle_kvm_exit(VcpuExit::InternalError, 0, &ctx),
            Err(VcpuError::InternalError)
        ));
        assert!(matches!(
            handle_kvm_exit(VcpuExit::FailEntry(0x80, 0), 0, &ctx),
            Err(VcpuError::FailEntry(0x80))
        ));
        assert!(matches!(
            handle_kvm_exit(VcpuExit::Exception, 0, &ctx),
            Err(VcpuError::UnexpectedExit(_))
        ));
        assert_eq!(
            handle_kvm_exit(VcpuExit::Intr, 0, &ctx).unwrap(),
            VcpuEmulation::Interrupted
        );
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0000); // masked
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x0000_0400);
    }

    #[test]
    fn capturing_an_exited_vcpu_fails_at_once() {
        let c = VcpuControl::new(0);
        c.set_observed(VcpuRunState::Exited);
        let rx = c.request_capture();
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_err());
    }

    #[test]
    fn control_without_a_thread_reports_timeouts() {
        let c = VcpuControl::new(0);
        c.request_pause();
        assert!(!c.wait_paused(Duration::from_millis(1)));
        assert!(c.pending.load(Ordering::SeqCst));
        c.set_observed(VcpuRunState::Exited);
        assert!(c.wait_paused(Duration::from_millis(1)));
    }
}
