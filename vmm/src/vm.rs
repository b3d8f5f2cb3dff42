//! One incarnation of a VM: KVM VM, guest memory, devices and vCPU threads.
//! A guest reset tears it down and builds a new one from the same spec.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use devices::EventSink;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use log::{debug, info, warn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::boot::{acpi, kexec, layout, pvh};
use crate::cpuid::{self, CpuidParams};
use crate::device_manager::{self, Devices, SharedWriter};
use crate::dump::DumpSources;
use crate::vcpu::{ExitContext, ExitStats, FaultReporter, Vcpu, VcpuControl};

/// How long a pause waits for every vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors building or driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A VM-level KVM ioctl failed.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory could not be mapped.
    #[error("allocating guest memory failed")]
    Memory(#[source] vm_memory::mmap::FromRangesError),
    /// Writing guest memory failed.
    #[error("writing guest memory failed")]
    GuestWrite(#[source] vm_memory::GuestMemoryError),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Boot(#[from] pvh::PvhError),
    /// The ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// CPUID could not be built.
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    /// Device setup failed.
    #[error(transparent)]
    Devices(#[from] device_manager::DeviceManagerError),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] crate::vcpu::VcpuError),
    /// Some vCPUs did not park in time.
    #[error("vcpus did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// Reading a vCPU's registers for a dump failed.
    #[error("capturing vcpu {0} failed: {1}")]
    Capture(u32, String),
}

type Result<T> = std::result::Result<T, VmError>;

/// What a VM is built from (the parts of `VmConfig` that survive restarts).
#[derive(Clone, Copy, Debug)]
pub struct VmSpec<'a> {
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Kernel ELF image.
    pub kernel: &'a [u8],
    /// Kernel command line.
    pub cmdline: &'a str,
    /// The pvpanic device's event mask (0: no device, no DSDT entry).
    pub pvpanic_events: u8,
}

/// A built VM. vCPU threads run between [`Vm::start`] and [`Vm::shutdown`].
pub struct Vm {
    fd: VmFd,
    memory: GuestMemoryMmap,
    devices: Devices,
    stats: Arc<ExitStats>,
    vcpus: Vec<Vcpu>,
    controls: Vec<Arc<VcpuControl>>,
    threads: Vec<JoinHandle<()>>,
    dump_sources: DumpSources,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.controls)
            .field("devices", &self.devices)
            .finish()
    }
}

fn guest_memory(ram: &[(u64, u64)]) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram
        .iter()
        .map(|&(base, size)| (GuestAddress(base), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(VmError::Memory)
}

fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(VmError::GuestWrite)?;
        let mr = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of exactly `len` bytes owned
        // by `memory`, which the Vm keeps until after the VM fd is closed
        // (field order: `fd` drops before `memory`).
        unsafe { vm.set_user_memory_region(mr) }
            .map_err(|e| VmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

/// `crashkernel=`: the VMM plays `kexec -p` (boot/kexec.rs). A refusal is
/// a warning: the guest then boots with the reservation but nothing loaded.
fn load_capture_kernel(memory: &GuestMemoryMmap, spec: VmSpec<'_>, ram: &[(u64, u64)], rsdp: u64) {
    match kexec::load(memory, spec.kernel, spec.cmdline, ram, rsdp) {
        Ok(Some(l)) => {
            info!(
                "kexec: capture kernel in {:#x}-{:#x}: entry {:#x}, cr3 {:#x}, start_info {:#x}, \
                 descriptor {:#x}, elfcorehdr {:#x}, digest {:#x}",
                l.region.0,
                l.region.1,
                l.entry,
                l.cr3,
                l.start_info,
                l.descriptor,
                l.elfcorehdr,
                l.digest
            );
            eprintln!(
                "vmm: kexec: capture kernel loaded at {:#x}-{:#x} (entry {:#x})",
                l.region.0, l.region.1, l.entry
            );
        }
        Ok(None) => {}
        Err(e) => warn!(
            "kexec: no capture kernel loaded: {}",
            crate::dump::error_chain(&e)
        ),
    }
}

impl Vm {
    /// Creates the VM, loads the kernel and boot data, wires the devices and
    /// configures the vCPUs. Nothing runs yet.
    pub fn build(
        kvm: &Kvm,
        spec: VmSpec<'_>,
        events: Arc<dyn EventSink>,
        serial_out: SharedWriter,
    ) -> Result<Self> {
        let ram = layout::ram_ranges(spec.memory);
        // Check the image before any KVM work, so bad input fails fast.
        pvh::check_segments_fit(&pvh::load_segments(spec.kernel)?, &ram)?;

        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("KVM_CREATE_VM", e))?;
        // Memory slots first: registering one after the irqchip and PIT exist
        // costs ~5 ms here (KVM waits for their readers), before ~0.3 ms.
        let memory = guest_memory(&ram)?;
        register_memory(&fd, &memory)?;
        fd.set_tss_address(layout::KVM_TSS_ADDR as usize)
            .map_err(|e| VmError::Kvm("KVM_SET_TSS_ADDR", e))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
            .map_err(|e| VmError::Kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        // The irqchip must exist before any vCPU.
        fd.create_irq_chip()
            .map_err(|e| VmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Kvm("KVM_CREATE_PIT2", e))?;

        let entry = pvh::load_kernel(&memory, spec.kernel, &ram)?;
        let tables = acpi::build(spec.cpus, spec.pvpanic_events != 0)?;
        memory
            .write_slice(&tables.bytes, GuestAddress(layout::ACPI_TABLES_START))
            .map_err(VmError::GuestWrite)?;
        pvh::write_boot_info(&memory, &ram, spec.cmdline, tables.rsdp_addr)?;
        load_capture_kernel(&memory, spec, &ram, tables.rsdp_addr);
        pvh::write_boot_gdt(&memory)?;

        let devices = device_manager::create_devices(
            &fd,
            device_manager::DeviceSpec {
                kvm,
                cpus: spec.cpus,
                ram: Arc::new(memory.clone()),
                pvpanic_events: spec.pvpanic_events,
            },
            events,
            serial_out,
        )?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let mut vcpus = Vec::with_capacity(spec.cpus as usize);
        for id in 0..spec.cpus {
            let vcpu_fd = fd
                .create_vcpu(u64::from(id))
                .map_err(|e| VmError::Kvm("KVM_CREATE_VCPU", e))?;
            let tsc_khz = vcpu_fd.get_tsc_khz().unwrap_or_else(|e| {
                warn!("vcpu {id}: KVM_GET_TSC_KHZ failed ({e}); the guest must calibrate");
                0
            });
            let cpuid = cpuid::vcpu_cpuid(
                &supported,
                CpuidParams {
                    vcpu_id: id,
                    cpus: spec.cpus,
                    tsc_khz,
                },
            )?;
            let bsp_entry = (id == 0).then_some(entry);
            vcpus.push(Vcpu::configure(vcpu_fd, id, &cpuid, bsp_entry)?);
        }
        let controls = (0..spec.cpus)
            .map(|id| Arc::new(VcpuControl::new(id)))
            .collect();
        debug!(
            "vm built: {} vcpus, {:#x} bytes, entry {entry:#x}",
            spec.cpus, spec.memory
        );
        Ok(Self {
            fd,
            memory,
            devices,
            stats: Arc::default(),
            vcpus,
            controls,
            threads: Vec::new(),
            dump_sources: DumpSources::default(),
        })
    }

    /// Starts one thread per vCPU.
    pub fn start(&mut self, faults: FaultReporter) -> Result<()> {
        let pio = Arc::new(std::mem::take(&mut self.devices.pio));
        let mmio = Arc::new(std::mem::take(&mut self.devices.mmio));
        for (vcpu, control) in self.vcpus.drain(..).zip(&self.controls) {
            let ctx = ExitContext {
                vcpu: control.id(),
                pio: pio.clone(),
                mmio: mmio.clone(),
                stats: self.stats.clone(),
            };
            let thread = vcpu.spawn(control.clone(), ctx, faults.clone())?;
            self.threads.push(thread);
        }
        Ok(())
    }

    /// The vCPU controls, indexed by vCPU id.
    pub fn vcpus(&self) -> &[Arc<VcpuControl>] {
        &self.controls
    }

    /// COM1 of this incarnation.
    pub fn serial(&self) -> Arc<std::sync::Mutex<crate::device_manager::Serial>> {
        self.devices.serial.clone()
    }

    /// Counters of unclaimed accesses.
    pub fn exit_stats(&self) -> &ExitStats {
        &self.stats
    }

    /// Guest memory (for dumps and tests).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Parks every vCPU and waits until they all are.
    /// Where a dump of this VM finds device state (pv_vmx, VMCOREINFO,
    /// the pvpanic log); nothing until [`Vm::set_dump_sources`].
    pub fn dump_sources(&self) -> &DumpSources {
        &self.dump_sources
    }

    /// Connects this VM's devices to its dumps (called where the devices
    /// are built; a reset builds a new VM, so this is per incarnation).
    pub fn set_dump_sources(&mut self, sources: DumpSources) {
        self.dump_sources = sources;
    }

    /// Every vCPU's registers, each read on its own thread. The vCPUs must
    /// be paused ([`Vm::pause`]) for the result to be a consistent snapshot.
    pub fn capture_cpus(&self) -> Result<Vec<vmcore::CpuState>> {
        let pending: Vec<_> = self
            .controls
            .iter()
            .map(|c| (c.id(), c.request_capture()))
            .collect();
        let mut cpus = Vec::with_capacity(pending.len());
        for (id, rx) in pending {
            match rx.recv_timeout(PAUSE_TIMEOUT) {
                Ok(Ok(cpu)) => cpus.push(cpu),
                Ok(Err(why)) => return Err(VmError::Capture(id, why)),
                Err(_) => return Err(VmError::Capture(id, "no answer from its thread".into())),
            }
        }
        Ok(cpus)
    }

    pub fn pause(&self) -> Result<()> {
        for c in &self.controls {
            c.request_pause();
        }
        for c in &self.controls {
            if !c.wait_paused(PAUSE_TIMEOUT) {
                return Err(VmError::PauseTimeout(PAUSE_TIMEOUT));
            }
        }
        Ok(())
    }

    /// Lets every vCPU run again.
    pub fn resume(&self) {
        for c in &self.controls {
            c.request_resume();
        }
        for c in &self.controls {
            if !c.wait_running(PAUSE_TIMEOUT) {
                warn!("vcpu {} did not resume in time", c.id());
            }
        }
    }

    /// The devices the VMM talks to directly.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Presses the ACPI power button; returns whether the guest had
    /// enabled its event (so an SCI was raised).
    pub fn press_power_button(&self) -> bool {
        self.devices
            .pm1_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .press_power_button()
    }

    /// Injects an NMI into every vCPU (each from its own thread).
    pub fn inject_nmi(&self) {
        for c in &self.controls {
            c.request_nmi();
        }
    }

    /// Stops and joins every vCPU thread.
    pub fn shutdown(&mut self) {
        for c in &self.controls {
            c.request_stop();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("a vcpu thread panicked");
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
