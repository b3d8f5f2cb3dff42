//! The serial console on COM1: a polled 16550 behind a spinlock, so lines
//! from different CPUs never interleave.
//!
//! Output is built with [`Line`]'s chained writers (no `core::fmt`):
//! `console::line().str("CPU ").dec(n).str("\n");` holds the lock for the
//! whole statement.

use guest_abi::ports::COM1;
use guest_kernel::fmt;
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

    fn put(&mut self, byte: u8) {
        if self.room == 0 {
            let mut polls = 0;
            // SAFETY: reading LSR has no side effects we rely on.
            while unsafe { self.port(LSR).read() } & LSR_THRE == 0 && polls < THRE_POLL_LIMIT {
                core::hint::spin_loop();
                polls += 1;
            }
            self.room = TX_FIFO_BYTES;
        }
        // SAFETY: THR write queues one byte for transmission.
        unsafe { self.port(THR).write(byte) };
        self.room -= 1;
    }
}

static CONSOLE: SpinLock<Uart> = SpinLock::new(Uart::new(COM1));

/// Initialises the UART. Call once, on the boot CPU, before other CPUs run.
pub fn init() {
    CONSOLE.lock().init();
}

/// A line being written, holding the console lock until dropped.
#[derive(Debug)]
pub struct Line<'a> {
    uart: SpinLockGuard<'a, Uart>,
}

/// Locks the console (spinning) for one line.
pub fn line() -> Line<'static> {
    Line {
        uart: CONSOLE.lock_as(current_cpu() as u32),
    }
}

/// Locks the console from a trap handler, which may have interrupted this
/// very CPU while it held the lock.
///
/// For a handler that returns (NMI), that case gives `None`: the message is
/// dropped rather than spinning forever or corrupting the line in progress.
/// A handler that never returns (`breaks_lock`) takes the lock over instead,
/// since the interrupted writer will never run again (Linux's
/// `bust_spinlocks`).
pub fn line_in_trap(breaks_lock: bool) -> Option<Line<'static>> {
    let cpu = current_cpu() as u32;
    if CONSOLE.owner() == Some(cpu) {
        if !breaks_lock {
            return None;
        }
        // SAFETY: the holder is this CPU's interrupted context, which this
        // handler never returns to.
        unsafe { CONSOLE.force_unlock() };
        let mut line = Line {
            uart: CONSOLE.lock_as(cpu),
        };
        line.str("\n"); // end the interrupted line
        return Some(line);
    }
    Some(Line {
        uart: CONSOLE.lock_as(cpu),
    })
}

/// Locks the console if it is free (the panic path's `console_trylock`).
// Used by the panic/crash-injection work (issue 4).
#[allow(dead_code)]
pub fn try_line() -> Option<Line<'static>> {
    CONSOLE
        .try_lock_as(current_cpu() as u32)
        .map(|uart| Line { uart })
}

impl Line<'_> {
    /// Writes raw bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.uart.put(b);
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

    /// Ends a chain of writes (releasing the console when the line drops).
    pub fn done(&mut self) {}

    /// Writes `v` in hex with a `0x` prefix.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        self.bytes(b"0x").bytes(fmt::hex(v).as_bytes())
    }
}
