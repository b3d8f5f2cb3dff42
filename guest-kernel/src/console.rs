//! The serial console on COM1: a polled 16550 behind a spinlock, so lines
//! from different CPUs never interleave.
//!
//! Output is built with [`Line`]'s chained writers (no `core::fmt`):
//! `console::line().str("CPU ").dec(n).str("\n");` collects the text and,
//! when the line drops, stores it in the kmsg ring (with a `[seq] ` prefix)
//! and prints what the ring holds that the console has not printed yet, as
//! printk's `console_unlock` does. If the console is busy (held by a CPU the
//! panic path stopped, or by this CPU's interrupted context) the text waits
//! in the ring for the next printer or for [`panic_flush`].

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_abi::ports::COM1;
use guest_kernel::fmt;
use guest_kernel::kmsg::{self, ConsoleFilter, RingWriter, LOG_BUF_LEN};
use guest_kernel::sync::{SpinLock, SpinLockGuard};

use crate::arch::cpu::Port;
use crate::arch::percpu::current_cpu;

/// 16550 registers (offsets from the base port).
const THR: u16 = 0; // transmit holding (DLAB=0) / divisor low (DLAB=1)
const IER: u16 = 1; // interrupt enable (DLAB=0) / divisor high (DLAB=1)
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
const FCR_ENABLE_CLEAR_14: u8 = 0xc7; // enable, clear both FIFOs, 14-byte trigger
const MCR_DTR_RTS: u8 = 0x03;
const LSR_THRE: u8 = 0x20;
const DIVISOR_115200: u8 = 1;
const TX_FIFO_BYTES: u8 = 16;
/// Polls of LSR before writing anyway (a missing or stuck UART must not
/// hang the kernel).
const THRE_POLL_LIMIT: u32 = 100_000;

/// A polled 16550 UART.
#[derive(Debug)]
pub struct Uart {
    base: u16,
    /// Bytes the transmit FIFO can still take without polling LSR.
    room: u8,
}

impl Uart {
    const fn new(base: u16) -> Self {
        Self { base, room: 0 }
    }

    fn port(&self, reg: u16) -> Port<u8> {
        Port::new(self.base + reg)
    }

    /// 115200 8n1, FIFOs on, interrupts off.
    fn init(&mut self) {
        // SAFETY: programming the UART we own; values per the 16550 datasheet.
        unsafe {
            self.port(IER).write(0);
            self.port(LCR).write(LCR_DLAB);
            self.port(THR).write(DIVISOR_115200);
            self.port(IER).write(0);
            self.port(LCR).write(LCR_8N1);
            self.port(FCR).write(FCR_ENABLE_CLEAR_14);
            self.port(MCR).write(MCR_DTR_RTS);
        }
        self.room = 0;
    }

    /// Polls LSR until the transmit FIFO is empty when no room is known;
    /// then a FIFO-full can be written without polling.
    fn wait_for_room(&mut self) {
        if self.room != 0 {
            return;
        }
        let mut polls = 0;
        // SAFETY: reading LSR has no side effects we rely on.
        while unsafe { self.port(LSR).read() } & LSR_THRE == 0 && polls < THRE_POLL_LIMIT {
            core::hint::spin_loop();
            polls += 1;
        }
        self.room = TX_FIFO_BYTES;
    }

    /// Reads LSR once. A VMM may queue THR writes without an exit (ours
    /// registers THR as a KVM coalesced PIO zone); this exit makes the text
    /// just written reach the host now. It also refreshes the room.
    fn flush(&mut self) {
        // SAFETY: reading LSR has no side effects we rely on.
        if unsafe { self.port(LSR).read() } & LSR_THRE != 0 {
            self.room = TX_FIFO_BYTES;
        }
    }

    fn put(&mut self, byte: u8) {
        self.wait_for_room();
        // SAFETY: THR write queues one byte for transmission.
        unsafe { self.port(THR).write(byte) };
        self.room -= 1;
    }

    /// Sends `bytes`, a FIFO-full per `rep outsb`: one port exit per 16
    /// bytes instead of one per byte.
    fn put_bytes(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            self.wait_for_room();
            let n = rest.len().min(usize::from(self.room));
            let chunk = rest.get(..n).unwrap_or(rest);
            // SAFETY: `rep outsb` reads `chunk.len()` bytes from `chunk` and
            // writes each to THR; DF is clear (ABI); memory is only read.
            unsafe {
                core::arch::asm!(
                    "rep outsb",
                    in("dx") self.base + THR,
                    inout("rsi") chunk.as_ptr() => _,
                    inout("rcx") chunk.len() => _,
                    options(nostack, preserves_flags, readonly),
                )
            };
            self.room -= n as u8;
            rest = rest.get(n..).unwrap_or(&[]);
        }
        self.flush();
    }
}

/// The console: the UART plus how far into the kmsg ring it has printed.
#[derive(Debug)]
struct Console {
    uart: Uart,
    /// Ring position up to which text reached the UART.
    printed: u64,
    filter: ConsoleFilter,
}

static CONSOLE: SpinLock<Console> = SpinLock::new(Console {
    uart: Uart::new(COM1),
    printed: 0,
    filter: ConsoleFilter::new(),
});

/// The kmsg ring writer (head, next sequence number).
static KMSG: SpinLock<RingWriter> = SpinLock::new(RingWriter::new());

/// The kmsg text ring (`SYMBOL(log_buf)` in VMCOREINFO).
#[repr(C, align(4096))]
pub struct LogBuf(UnsafeCell<[u8; LOG_BUF_LEN]>);

// SAFETY: written only under the KMSG lock; read (by the console printer,
// kmsg_dump and the replay) only below the published head, which writers
// reach again only after wrapping the whole ring.
unsafe impl Sync for LogBuf {}

/// The ring itself, in .bss (never zeroed by the kernel: the loader did).
#[no_mangle]
pub static LOG_BUF: LogBuf = LogBuf(UnsafeCell::new([0; LOG_BUF_LEN]));

/// Bytes ever written to [`LOG_BUF`] (`SYMBOL(log_buf_head)`).
#[no_mangle]
pub static LOG_BUF_HEAD: AtomicU64 = AtomicU64::new(0);

/// Lines the kmsg lost because their CPU interrupted its own writer.
static KMSG_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Spins of a bounded lock wait on the panic path before it breaks the
/// lock (the holder is a CPU that will never release it).
const PANIC_LOCK_SPINS: u32 = 200_000;

fn ring_ptr() -> *mut u8 {
    LOG_BUF.0.get().cast::<u8>()
}

/// Physical address and length of the ring (identity-mapped).
pub fn log_buf() -> (u64, usize) {
    (ring_ptr() as u64, LOG_BUF_LEN)
}

/// The ring contents from position `from` (clamped) to the published head.
fn ring_since(from: u64) -> (&'static [u8], &'static [u8], u64) {
    let head = LOG_BUF_HEAD.load(Ordering::Acquire);
    // SAFETY: see `LogBuf`: bytes below the published head are complete and
    // are not rewritten until the ring wraps.
    let ring = unsafe { core::slice::from_raw_parts(ring_ptr(), LOG_BUF_LEN) };
    let (a, b) = kmsg::contents_since(ring, head, from);
    (a, b, head)
}

/// Initialises the UART. Call once, on the boot CPU, before other CPUs run.
pub fn init() {
    CONSOLE.lock().uart.init();
}

/// How a line may wait for the locks it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Normal code: spin for the console (the panicking CPU only trylocks).
    Normal,
    /// A trap handler that returns: never spins on its own CPU's locks.
    TrapReturning,
    /// A trap handler that never returns: breaks its own CPU's locks.
    TrapFatal,
    /// Never wait for the console.
    Try,
}

/// Bytes a line collects before it is stored.
const LINE_BUF: usize = 160;

/// A line being written. The text is stored in the kmsg ring (and printed)
/// when the line is dropped, or in pieces when it outgrows its buffer.
#[derive(Debug)]
pub struct Line {
    buf: [u8; LINE_BUF],
    len: usize,
    mode: Mode,
}

/// Starts a line from normal code.
pub fn line() -> Line {
    Line::new(Mode::Normal)
}

/// Starts a line from a trap handler, which may have interrupted this very
/// CPU while it held the kmsg or console lock.
///
/// For a handler that returns (NMI), that case leaves the text for the
/// interrupted writer to print (or drops it, when the kmsg lock was held);
/// a handler that never returns (`breaks_lock`) takes the locks over,
/// since the interrupted writer will never run again (Linux's
/// `bust_spinlocks`). Always `Some` (kept for the callers' shape).
pub fn line_in_trap(breaks_lock: bool) -> Option<Line> {
    Some(Line::new(if breaks_lock {
        Mode::TrapFatal
    } else {
        Mode::TrapReturning
    }))
}

/// A line that never waits for the console (printed later if it is busy).
#[allow(dead_code)]
pub fn try_line() -> Option<Line> {
    Some(Line::new(Mode::Try))
}

fn in_panic_on(cpu: u32) -> bool {
    crate::panic::panic_cpu() == Some(cpu)
}

/// Takes `lock` per `mode`: `None` when this CPU must not wait for it.
fn take<T>(
    lock: &'static SpinLock<T>,
    mode: Mode,
    cpu: u32,
    console: bool,
) -> Option<SpinLockGuard<'static, T>> {
    if lock.owner() == Some(cpu) {
        if mode != Mode::TrapFatal && !in_panic_on(cpu) {
            return None;
        }
        if console && mode != Mode::TrapFatal {
            // The panicking CPU interrupted its own console output: leave it
            // to the final flush, which breaks the lock.
            return None;
        }
        // SAFETY: the holder is this CPU's interrupted context, which is
        // never resumed (fatal trap, or the panic path owns the CPU).
        unsafe { lock.force_unlock() };
        return lock.try_lock_as(cpu);
    }
    if mode == Mode::Try || (console && in_panic_on(cpu)) {
        return lock.try_lock_as(cpu);
    }
    if in_panic_on(cpu) {
        for _ in 0..PANIC_LOCK_SPINS {
            if let Some(g) = lock.try_lock_as(cpu) {
                return Some(g);
            }
            core::hint::spin_loop();
        }
        // SAFETY: the holder is another CPU that the panic path stopped (or
        // that is stuck); it never touches the ring again.
        unsafe { lock.force_unlock() };
        return lock.try_lock_as(cpu);
    }
    Some(lock.lock_as(cpu))
}

/// Prints everything in the ring the console has not printed yet. The
/// caller holds the console.
fn print_pending(c: &mut Console) {
    loop {
        let (a, b, head) = ring_since(c.printed);
        if c.printed >= head {
            c.uart.flush();
            return;
        }
        for &byte in a.iter().chain(b) {
            if c.filter.pass(byte) {
                c.uart.put(byte);
            }
        }
        c.printed = head;
    }
}

impl Line {
    fn new(mode: Mode) -> Self {
        Self {
            buf: [0; LINE_BUF],
            len: 0,
            mode,
        }
    }

    /// Stores the collected text in the ring and prints what is pending.
    fn commit(&mut self) {
        if self.len == 0 {
            return;
        }
        let cpu = current_cpu() as u32;
        let text = self.buf.get(..self.len).unwrap_or(&[]);
        self.len = 0;
        let (start, end) = match take(&KMSG, self.mode, cpu, false) {
            Some(mut w) => {
                // SAFETY: the KMSG lock is held: the only writer.
                let ring = unsafe { core::slice::from_raw_parts_mut(ring_ptr(), LOG_BUF_LEN) };
                let start = w.head;
                w.write(ring, text);
                LOG_BUF_HEAD.store(w.head, Ordering::Release);
                (start, w.head)
            }
            None => {
                KMSG_DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if let Some(mut c) = take(&CONSOLE, self.mode, cpu, true) {
            // The common case: the console has printed everything before
            // this line, which is whole. Print its text as is, instead of
            // re-reading it from the ring through the prefix filter.
            if c.printed == start && c.filter.at_line_start() && text.last() == Some(&b'\n') {
                c.uart.put_bytes(text);
                c.printed = end;
            } else {
                print_pending(&mut c);
            }
        }
    }

    /// Writes raw bytes: copied in runs (`rep movs`), not byte by byte, since
    /// every instruction costs about a microsecond under this host's CPL0
    /// emulation.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.len >= LINE_BUF {
                self.commit();
            }
            let n = rest.len().min(LINE_BUF - self.len);
            if let (Some(dst), Some(src)) =
                (self.buf.get_mut(self.len..self.len + n), rest.get(..n))
            {
                // SAFETY: both slices are exactly `n` bytes (from the ranges
                // above) and cannot overlap (`&mut` and `&`). Not
                // copy_from_slice: its length-mismatch panic would link
                // core::fmt, which uses SSE.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), n) };
            }
            self.len += n;
            rest = rest.get(n..).unwrap_or(&[]);
        }
        self
    }

    /// Writes a string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Writes `v` in decimal.
    pub fn dec(&mut self, v: u64) -> &mut Self {
        self.bytes(fmt::dec(v).as_bytes())
    }

    /// Ends a chain of writes (the line is stored when it drops).
    pub fn done(&mut self) {}

    /// Writes `v` in hex with a `0x` prefix.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        self.bytes(b"0x").bytes(fmt::hex(v).as_bytes())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.commit();
    }
}

/// The end of the panic path (the 2016 seed's comment): a stopped CPU may
/// hold the console lock with text still unprinted. Try to take the lock,
/// and break it if that fails, then print everything pending.
pub fn panic_flush() {
    let cpu = current_cpu() as u32;
    let mut c = match CONSOLE.try_lock_as(cpu) {
        Some(g) => g,
        None => {
            // SAFETY: called by the panicking CPU after the others were
            // stopped; the holder never runs again.
            unsafe { CONSOLE.force_unlock() };
            let mut c = CONSOLE.lock_as(cpu);
            // A line the holder left half-printed ends here.
            c.uart.put(b'\n');
            c
        }
    };
    print_pending(&mut c);
}

/// Prints the whole ring again, with its `[seq]` prefixes (panic_print
/// 0x20, Linux's `console_flush_on_panic(CONSOLE_REPLAY_ALL)`).
pub fn replay_all() {
    let cpu = current_cpu() as u32;
    let Some(mut c) = take(&CONSOLE, Mode::Normal, cpu, true) else {
        return;
    };
    print_pending(&mut c);
    let (a, b, _) = ring_since(0);
    for &byte in a.iter().chain(b) {
        c.uart.put(byte);
    }
}

/// Copies the ring, oldest first, to `dst`; returns (bytes copied, first
/// and one-past-last line sequence numbers).
pub fn copy_ring(dst: &mut [u8]) -> (usize, u64, u64) {
    let end_seq = KMSG.try_lock().map_or(0, |w| w.next_seq);
    let head = LOG_BUF_HEAD.load(Ordering::Acquire);
    let from = head.saturating_sub(dst.len().min(LOG_BUF_LEN) as u64);
    let (a, b, _) = ring_since(from);
    let mut n = 0;
    for part in [a, b] {
        n += copy_bytes(dst.get_mut(n..).unwrap_or(&mut []), part);
    }
    let text = dst.get(..n).unwrap_or(&[]);
    let first = kmsg::first_seq(text, from == 0).unwrap_or(0);
    (n, first, end_seq)
}

/// Copies as much of `src` as fits into `dst`; returns the count. (Not
/// `copy_from_slice`: its length check links core's formatting code.)
pub fn copy_bytes(dst: &mut [u8], src: &[u8]) -> usize {
    let n = dst.len().min(src.len());
    // SAFETY: both ranges hold at least `n` bytes and cannot overlap (one
    // is borrowed mutably).
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), n) };
    n
}

/// Lines lost so far (see [`line_in_trap`]).
#[allow(dead_code)]
pub fn dropped() -> u64 {
    KMSG_DROPPED.load(Ordering::Relaxed)
}

/// Takes the console lock and never releases it (crash injection:
/// CONSOLE_LOCKED). Only the panic path's final flush breaks it.
pub fn take_console_lock_forever() {
    let cpu = current_cpu() as u32;
    core::mem::forget(CONSOLE.lock_as(cpu));
}
