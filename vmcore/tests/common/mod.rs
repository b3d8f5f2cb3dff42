//! A synthetic guest for the vmcore tests: RAM with page tables, guest crash
//! notes, VMCOREINFO, a kmsg ring, vCPU states and VMX states.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use guest_abi::elfnote::{reg, CrashNote, ElfPrstatus, PvpanicLogEntry};
use vmcore::{
    write_vmcore, CpuState, DumpInput, DumpStats, PvpanicLog, RamRegion, Segment, VmxState,
    WriteOptions,
};

pub const NR_CPUS: u32 = 4;
pub const TEXT: (u64, u64) = (0x10_0000, 0x18_0000);
pub const CRASH_NOTES: u64 = 0x8000;
pub const STRIDE: u64 = 384;
pub const LOG_BUF: u64 = 0x9000;
pub const LOG_HEAD: u64 = 0x8ff8;
pub const PANIC_CPU: u64 = 0x8ff0;
pub const HIGH_VA: u64 = 0xffff_ffff_8000_0000;
/// Second RAM region (mapped at HIGH_VA for its first 2 MiB only).
pub const HIGH_GPA: u64 = 0x100_0000;
pub const KERNEL_CS: u16 = 0x08;

pub struct Guest {
    pub low: Vec<u8>,
    pub high: Vec<u8>,
    pub cpus: Vec<CpuState>,
    pub vmx: Vec<VmxState>,
    pub vmcoreinfo: Option<String>,
    pub pvpanic: PvpanicLog,
}

fn put(ram: &mut [u8], at: u64, v: u64) {
    ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// CPUs in `saved` have written their crash note; CPUs in `vmx_on` left VMX on.
pub fn guest(saved: &[u32], vmx_on: &[u32]) -> Guest {
    let mut low = vec![0u8; 4 << 20];
    let mut high = vec![0u8; 4 << 20];
    // PML4 0x1000: [0] -> PDPT 0x2000 -> PD 0x3000 identity 0..4 MiB (2 MiB
    // pages); [511] -> PDPT 0x4000 [510] -> PD 0x5000 [0] -> HIGH_GPA.
    put(&mut low, 0x1000, 0x2000 | 3);
    put(&mut low, 0x2000, 0x3000 | 3);
    put(&mut low, 0x3000, 0x83);
    put(&mut low, 0x3008, 0x20_0000 | 0x83);
    put(&mut low, 0x1000 + 511 * 8, 0x4000 | 3);
    put(&mut low, 0x4000 + 510 * 8, 0x5000 | 3);
    put(&mut low, 0x5000, HIGH_GPA | 0x83);
    // Recognisable data.
    for (i, b) in low[0x10_0000..0x10_1000].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    high[..16].copy_from_slice(b"high-half-bytes!");
    high[(3 << 20)..(3 << 20) + 8].copy_from_slice(b"unmapped");

    for &cpu in saved {
        let mut st = ElfPrstatus::zeroed();
        st.pr_pid = cpu as i32 + 1;
        st.pr_reg[reg::RIP] = TEXT.0 + 0x100 * cpu as u64;
        st.pr_reg[reg::CS] = KERNEL_CS as u64;
        st.pr_reg[reg::RSP] = 0x7000;
        let mut n = CrashNote::empty();
        n.write(&st);
        let at = (CRASH_NOTES + STRIDE * cpu as u64) as usize;
        low[at..at + n.bytes.len()].copy_from_slice(&n.bytes);
    }
    let kmsg = b"[0] booting\n[1] panic: test\n";
    low[LOG_BUF as usize..LOG_BUF as usize + kmsg.len()].copy_from_slice(kmsg);
    put(&mut low, LOG_HEAD, kmsg.len() as u64);
    low[PANIC_CPU as usize..PANIC_CPU as usize + 4].copy_from_slice(&2u32.to_le_bytes());

    let cpus = (0..NR_CPUS)
        .map(|i| CpuState {
            vcpu: i,
            apic_id: i,
            rip: TEXT.0 + 0x40 + i as u64,
            rsp: 0x7000 - 0x100 * i as u64,
            rax: 0x1111 * (i as u64 + 1),
            rflags: 0x46,
            cs: Segment {
                selector: KERNEL_CS,
                flags: Segment::flags_from_parts(0xb, true, 0, true, false, true, false, true),
                limit: 0xffff_ffff,
                base: 0,
            },
            cr0: 0x8000_0011,
            cr3: 0x1000,
            cr4: 0x20,
            efer: 0x500,
            ..Default::default()
        })
        .collect();
    let vmx = (0..NR_CPUS)
        .map(|i| {
            let on = vmx_on.contains(&i);
            VmxState {
                vcpu: i,
                vmx_on: on,
                vmcs_loaded: on,
                vmcs_flushed: !on,
                model_not_hardware: true,
                vmxon_region: Some(0x30_0000 + 0x1000 * i as u64),
                current_vmcs: on.then_some(0x31_0000 + 0x1000 * i as u64),
                last_cleared_vmcs: (!on).then_some(0x31_0000 + 0x1000 * i as u64),
            }
        })
        .collect();
    let vmcoreinfo = format!(
        "OSRELEASE=0.1.0-test\nPAGESIZE=4096\nSYMBOL(crash_notes)={CRASH_NOTES:x}\n\
         NUMBER(crash_notes_stride)={STRIDE}\nNUMBER(nr_cpus)={NR_CPUS}\n\
         SYMBOL(_stext)={:x}\nSYMBOL(_etext)={:x}\nNUMBER(kernel_cs)={KERNEL_CS}\n\
         SYMBOL(log_buf)={LOG_BUF:x}\nNUMBER(log_buf_len)=4096\nSYMBOL(log_buf_head)={LOG_HEAD:x}\n\
         SYMBOL(panic_cpu)={PANIC_CPU:x}\n",
        TEXT.0, TEXT.1
    );
    let pvpanic = PvpanicLog {
        entries: vec![
            PvpanicLogEntry {
                seq: 0,
                events: 2,
                vcpu: 2,
                pad: 0,
                timestamp_ns: 1_000,
            },
            PvpanicLogEntry {
                seq: 1,
                events: 1,
                vcpu: 2,
                pad: 0,
                timestamp_ns: 2_000,
            },
        ],
        dropped: 0,
    };
    Guest {
        low,
        high,
        cpus,
        vmx,
        vmcoreinfo: Some(vmcoreinfo),
        pvpanic,
    }
}

pub fn dump_with(g: &Guest, path: &Path, opts: &WriteOptions) -> DumpStats {
    let ram = [RamRegion::new(0, &g.low), RamRegion::new(HIGH_GPA, &g.high)];
    let input = DumpInput {
        ram: &ram,
        cpus: &g.cpus,
        vmx: &g.vmx,
        vmcoreinfo: g.vmcoreinfo.as_deref().map(str::as_bytes),
        pvpanic: Some(&g.pvpanic),
        fault: None,
        paging_cr3: Some(0x1000),
    };
    write_vmcore(path, &input, opts, &mut |_| {}).expect("dump written")
}

pub fn dump(g: &Guest, dir: &Path) -> PathBuf {
    let p = dir.join("vmcore");
    dump_with(g, &p, &WriteOptions::default());
    p
}

/// A fresh, empty directory under the target dir for one test.
pub fn test_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vmcore-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create test dir");
    d
}
