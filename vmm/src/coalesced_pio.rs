//! COM1's transmit register as a KVM coalesced PIO zone.
//!
//! Every port write normally costs a trip to userspace (about 5-8 us on this
//! host), and a console writes one byte per access. With port 0x3f8
//! registered through `KVM_REGISTER_COALESCED_MMIO` (`KVM_COALESCED_PIO`),
//! KVM appends those writes to a ring page shared with the VMM and lets the
//! guest run on. The VMM replays the ring, in order, through the real serial
//! device:
//! - on every exit of every vCPU, before the exit itself is handled, so any
//!   other access to the UART (an LSR read, an LCR write setting DLAB) sees
//!   every earlier write applied first. Only writes are coalesced; reads of
//!   0x3f8 still exit. A write made while DLAB is set is a divisor write,
//!   and the replay through the device makes it one, since the device state
//!   is exactly what it would have been without coalescing;
//! - by a drain thread every [`DRAIN_PERIOD`], for a guest that writes and
//!   then halts (with the in-kernel irqchip HLT never exits);
//! - when KVM finds the ring full, the write exits as usual, after the
//!   drain.
//!
//! The ring is one page for the whole VM, so drains are serialised by a
//! mutex. Entries do not say which vCPU wrote them; they are replayed as the
//! draining vCPU (the serial device does not look at it). Where KVM lacks
//! `KVM_CAP_COALESCED_PIO`, nothing is registered and every write exits.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use devices::Bus;
use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};
use kvm_ioctls::{Cap, IoEventAddress, VcpuFd, VmFd};
use log::debug;

/// How often the drain thread empties the ring.
pub const DRAIN_PERIOD: Duration = Duration::from_millis(10);

/// Errors while setting the zone up.
#[derive(Debug, thiserror::Error)]
pub enum CoalescedPioError {
    /// `KVM_REGISTER_COALESCED_MMIO` failed.
    #[error("KVM_REGISTER_COALESCED_MMIO")]
    Register(#[source] kvm_ioctls::Error),
    /// Mapping the ring page of a vCPU fd failed.
    #[error("mapping the coalesced MMIO ring")]
    Map(#[source] std::io::Error),
    /// Starting the drain thread failed.
    #[error("starting the coalesced PIO drain thread")]
    Thread(#[source] std::io::Error),
}

/// The mapped ring page.
#[derive(Debug)]
struct RingPage {
    ring: NonNull<kvm_coalesced_mmio_ring>,
    page_size: usize,
}

// SAFETY: the page is plain shared memory; every access goes through the
// mutex in `CoalescedPio` (KVM is the only other party).
unsafe impl Send for RingPage {}

impl Drop for RingPage {
    fn drop(&mut self) {
        // SAFETY: unmaps the page this struct mapped; nothing refers to it
        // after the owner is dropped.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.page_size) };
    }
}

impl RingPage {
    fn entries(&self) -> usize {
        (self.page_size - size_of::<kvm_coalesced_mmio_ring>()) / size_of::<kvm_coalesced_mmio>()
    }

    /// Pops the oldest entry.
    fn pop(&mut self) -> Option<kvm_coalesced_mmio> {
        let max = self.entries() as u32;
        let ring = self.ring.as_ptr();
        // SAFETY: `ring` points at the live, mapped ring page; `first` is
        // ours to write, `last` is KVM's, both read volatile.
        let (first, last) = unsafe {
            (
                std::ptr::addr_of!((*ring).first).read_volatile(),
                std::ptr::addr_of!((*ring).last).read_volatile(),
            )
        };
        if first == last || first >= max {
            return None;
        }
        // KVM writes the entry before it publishes `last`.
        fence(Ordering::Acquire);
        // SAFETY: `first < max`, so the entry lies inside the mapped page.
        let entry = unsafe {
            std::ptr::addr_of!((*ring).coalesced_mmio)
                .cast::<kvm_coalesced_mmio>()
                .add(first as usize)
                .read_volatile()
        };
        // The entry is copied out before KVM may reuse its slot.
        fence(Ordering::Release);
        // SAFETY: as above; userspace owns `first`.
        unsafe { std::ptr::addr_of_mut!((*ring).first).write_volatile((first + 1) % max) };
        Some(entry)
    }
}

/// A coalesced PIO zone and its ring.
#[derive(Debug)]
pub struct CoalescedPio {
    ring: Mutex<RingPage>,
}

impl CoalescedPio {
    /// Registers `[port, port + len)` as coalesced and maps the ring through
    /// `vcpu` (any vCPU: the page is per VM). `Ok(None)` when KVM lacks
    /// `KVM_CAP_COALESCED_PIO`.
    pub fn register(
        vm: &VmFd,
        vcpu: &VcpuFd,
        port: u16,
        len: u32,
    ) -> Result<Option<Arc<Self>>, CoalescedPioError> {
        if !vm.check_extension(Cap::CoalescedPio) {
            return Ok(None);
        }
        // SAFETY: sysconf has no memory effects.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => 4096,
        };
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as libc::off_t;
        // SAFETY: maps one page of a vCPU fd at KVM's documented ring offset;
        // the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(CoalescedPioError::Map(std::io::Error::last_os_error()));
        }
        let ring = RingPage {
            ring: NonNull::new(addr.cast()).ok_or_else(|| {
                CoalescedPioError::Map(std::io::Error::other("mmap returned NULL"))
            })?,
            page_size,
        };
        vm.register_coalesced_mmio(IoEventAddress::Pio(u64::from(port)), len)
            .map_err(CoalescedPioError::Register)?;
        debug!(
            "coalesced PIO: ports {port:#x}+{len}, {} ring entries",
            ring.entries()
        );
        Ok(Some(Arc::new(Self {
            ring: Mutex::new(ring),
        })))
    }

    /// Replays every queued write through `pio`, oldest first, as `vcpu`.
    pub fn drain(&self, vcpu: u32, pio: &Bus) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = ring.pop() {
            let len = (entry.len as usize).min(entry.data.len());
            if !pio.write(vcpu, entry.phys_addr, &entry.data[..len]) {
                debug!("coalesced PIO: nobody at {:#x}", entry.phys_addr);
            }
        }
    }

    /// Starts the thread that drains every [`DRAIN_PERIOD`] until `this` is
    /// dropped.
    pub fn spawn_drain_thread(this: &Arc<Self>, pio: Arc<Bus>) -> Result<(), CoalescedPioError> {
        let weak: Weak<Self> = Arc::downgrade(this);
        std::thread::Builder::new()
            .name("serial-drain".into())
            .stack_size(64 << 10)
            .spawn(move || {
                crate::seccomp::apply_or_log(crate::seccomp::ThreadKind::SerialDrain);
                loop {
                    std::thread::sleep(DRAIN_PERIOD);
                    match weak.upgrade() {
                        Some(ring) => ring.drain(u32::MAX, &pio),
                        None => return,
                    }
                }
            })
            .map(drop)
            .map_err(CoalescedPioError::Thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::{Access, BusDevice};
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuExit};

    /// Every UART access, in the order the device saw it.
    #[derive(Default)]
    struct Recorder {
        seen: Vec<(char, u64, u8)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, access: Access, data: &mut [u8]) {
            self.seen.push(('r', access.offset, 0));
            data.fill(0x60); // LSR: THR empty
        }
        fn write(&mut self, access: Access, data: &[u8]) {
            self.seen.push(('w', access.offset, data[0]));
        }
    }

    /// Real-mode code: THR 'a' 'b', LCR = DLAB, divisor 0x01 through 0x3f8,
    /// an LSR read, THR 'c', halt.
    const CODE: &[u8] = &[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'a', 0xee, // mov al, 'a'; out dx, al
        0xb0, b'b', 0xee, // mov al, 'b'; out dx, al
        0xba, 0xfb, 0x03, // mov dx, 0x3fb
        0xb0, 0x80, 0xee, // mov al, 0x80; out dx, al  (LCR: DLAB)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, 0x01, 0xee, // mov al, 1; out dx, al     (a divisor write now)
        0xba, 0xfd, 0x03, // mov dx, 0x3fd
        0xec, // in al, dx                              (LSR)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'c', 0xee, // mov al, 'c'; out dx, al
        0xf4, // hlt
    ];

    #[test]
    fn queued_writes_reach_the_device_in_order_before_each_exit() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIPPED: no /dev/kvm");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let mem_size = 0x4000;
        // SAFETY: anonymous private mapping, unmapped at the end.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mem_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED);
        // SAFETY: CODE fits in the fresh mapping at offset 0x1000.
        unsafe {
            std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem.cast::<u8>().add(0x1000), CODE.len())
        };
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: mem_size as u64,
            userspace_addr: mem as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of mem_size bytes that
        // outlives the VM (unmapped after it is dropped).
        unsafe { vm.set_user_memory_region(region).unwrap() };
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let Some(ring) = CoalescedPio::register(&vm, &vcpu, 0x3f8, 1).unwrap() else {
            eprintln!("SKIPPED: KVM has no KVM_CAP_COALESCED_PIO");
            return;
        };
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rip = 0x1000;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();

        let rec = Arc::new(Mutex::new(Recorder::default()));
        let mut pio = Bus::new();
        pio.insert(rec.clone(), 0x3f8, 8).unwrap();
        let mut exits_at_thr = 0;
        for _ in 0..100 {
            let exit = vcpu.run().unwrap();
            ring.drain(0, &pio);
            match exit {
                VcpuExit::IoOut(port, data) => {
                    exits_at_thr += usize::from(port == 0x3f8);
                    assert!(pio.write(0, u64::from(port), data));
                }
                VcpuExit::IoIn(port, data) => assert!(pio.read(0, u64::from(port), data)),
                VcpuExit::Hlt => break,
                other => panic!("unexpected exit {other:?}"),
            }
        }
        // The trailing 'c' is queued without an exit; the halt exit drained it.
        let seen = rec.lock().unwrap().seen.clone();
        assert_eq!(
            seen,
            vec![
                ('w', 0, b'a'),
                ('w', 0, b'b'),
                ('w', 3, 0x80),
                ('w', 0, 0x01),
                ('r', 5, 0),
                ('w', 0, b'c'),
            ]
        );
        assert_eq!(exits_at_thr, 0, "THR writes still exit one by one");
        drop(vcpu);
        drop(vm);
        // SAFETY: unmaps the mapping made above; the VM is gone.
        unsafe { libc::munmap(mem, mem_size) };
    }
}
