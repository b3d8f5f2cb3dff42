//! Test-only fault-injection knobs (`fault_*=` and `serial_flood=` on the
//! command line) and the host-testable parts of what they do: which byte
//! of a crash note to scribble on, and the pseudo-random values written to
//! every device port, filtered so that no value asks the platform to power
//! off, reset or report a panic.
//!
//! The knobs exist so the VMM's fault-injection tests (`tests/tests/faults.rs`)
//! can make the guest misbehave on purpose; a normal boot never sets them.
//! They are parsed here, separately from [`crate::cmdline::BootConfig`],
//! which ignores unknown keys as Linux does.

use guest_abi::elfnote::CRASH_NOTE_PRSTATUS_OFFSET;
use guest_abi::ports;

use crate::cmdline::{key_eq, params, parse_u64};

/// Which field of a saved crash note `fault_note=CPU:FIELD` corrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteField {
    /// The note name: `CORE` becomes `XORE`.
    Name,
    /// `n_descsz`: 336 becomes 100.
    Descsz,
    /// `pr_pid`: CPU + 1 becomes CPU + 101.
    Pid,
}

impl NoteField {
    fn parse(v: &[u8]) -> Option<Self> {
        match v {
            b"name" => Some(Self::Name),
            b"descsz" => Some(Self::Descsz),
            b"pid" => Some(Self::Pid),
            _ => None,
        }
    }

    /// Applies the corruption to a saved crash-note buffer
    /// (`guest_abi::elfnote::CrashNote` layout: 12-byte header, name
    /// `CORE\0` padded to 8, then `elf_prstatus` with `pr_pid` at 32).
    pub fn corrupt(self, note: &mut [u8]) {
        let (at, bytes): (usize, &[u8]) = match self {
            Self::Name => (12, b"X"),
            Self::Descsz => (4, &[100, 0, 0, 0]),
            Self::Pid => (CRASH_NOTE_PRSTATUS_OFFSET + PR_PID_OFFSET, &[]),
        };
        if self == Self::Pid {
            if let Some(b) = note.get_mut(at) {
                *b = b.wrapping_add(100);
            }
            return;
        }
        for (d, s) in note.iter_mut().skip(at).zip(bytes) {
            *d = *s;
        }
    }
}

/// Offset of `pr_pid` in `elf_prstatus`.
const PR_PID_OFFSET: usize = 32;

/// What `fault_vmcoreinfo=` does to the registered VMCOREINFO text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmcoreinfoFault {
    /// `SYMBOL(crash_notes)=<hex>`: the hex digits become `z`.
    CrashNotes,
    /// `NUMBER(nr_cpus)=<n>`: the first digit becomes `9`.
    NrCpus,
}

impl VmcoreinfoFault {
    fn parse(v: &[u8]) -> Option<Self> {
        match v {
            b"crash_notes" => Some(Self::CrashNotes),
            b"nr_cpus" => Some(Self::NrCpus),
            _ => None,
        }
    }

    /// Rewrites the value of the key this fault names in `text` (the
    /// `KEY=value\n` lines), in place; false if the key is not there.
    pub fn apply(self, text: &mut [u8]) -> bool {
        let (key, with): (&[u8], u8) = match self {
            Self::CrashNotes => (b"SYMBOL(crash_notes)=", b'z'),
            Self::NrCpus => (b"NUMBER(nr_cpus)=", b'9'),
        };
        let Some(start) = text.windows(key.len()).position(|w| w == key) else {
            return false;
        };
        let mut i = start + key.len();
        let mut changed = false;
        while let Some(b) = text.get_mut(i) {
            if *b == b'\n' || *b == 0 {
                break;
            }
            *b = with;
            changed = true;
            i += 1;
            if self == Self::NrCpus {
                break;
            }
        }
        changed
    }
}

/// The fault knobs (all off by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultKnobs {
    /// `fault_note=CPU:name|descsz|pid`: after the NMI shootdown (in a
    /// panic notifier that runs before pvpanic), corrupt that CPU's note.
    pub note: Option<(u32, NoteField)>,
    /// `fault_vmcoreinfo=crash_notes|nr_cpus`: corrupt the registered
    /// VMCOREINFO right after boot.
    pub vmcoreinfo: Option<VmcoreinfoFault>,
    /// `fault_triple_fault`: a panic notifier (before pvpanic) loads an
    /// empty IDT and executes `ud2`: #UD, #GP, #DF, triple fault.
    pub triple_fault: bool,
    /// `fault_nmi_callback_panic=CPU`: that CPU panics inside the crash NMI
    /// callback (a nested panic in NMI context, while another CPU panics).
    pub nmi_callback_panic: Option<u32>,
    /// `fault_nmi_deaf=CPU`: right after boot that CPU enters its NMI
    /// handler and halts there with NMIs blocked, so it never answers the
    /// crash NMI.
    pub nmi_deaf: Option<u32>,
    /// `fault_device_garbage[=SEED]`: before the pv devices are probed,
    /// write pseudo-random values of every width to every port of every
    /// device the VMM emulates, then carry on booting.
    pub device_garbage: Option<u64>,
    /// `serial_flood=BYTES`: after boot, write BYTES bytes to COM1 as fast
    /// as `rep outsb` goes.
    pub serial_flood: u64,
    /// Known keys with a value that could not be used.
    pub invalid: u32,
}

/// Default seed of `fault_device_garbage` without a value.
pub const DEFAULT_GARBAGE_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

impl FaultKnobs {
    /// Reads the fault knobs of `cmdline`; every other key is ignored.
    pub fn parse(cmdline: &[u8]) -> Self {
        let mut k = Self::default();
        for p in params(cmdline) {
            let is = |name: &str| key_eq(p.key, name.as_bytes());
            let cpu = |v: Option<&[u8]>| v.and_then(parse_u64).and_then(|c| u32::try_from(c).ok());
            let ok = if is("fault_note") {
                let parsed = p.value.and_then(|v| {
                    let colon = v.iter().position(|&b| b == b':')?;
                    Some((cpu(v.get(..colon))?, NoteField::parse(v.get(colon + 1..)?)?))
                });
                k.note = parsed.or(k.note);
                parsed.is_some()
            } else if is("fault_vmcoreinfo") {
                let parsed = p.value.and_then(VmcoreinfoFault::parse);
                k.vmcoreinfo = parsed.or(k.vmcoreinfo);
                parsed.is_some()
            } else if is("fault_triple_fault") {
                k.triple_fault = p.value.is_none();
                p.value.is_none()
            } else if is("fault_nmi_callback_panic") {
                k.nmi_callback_panic = cpu(p.value).or(k.nmi_callback_panic);
                cpu(p.value).is_some()
            } else if is("fault_nmi_deaf") {
                k.nmi_deaf = cpu(p.value).or(k.nmi_deaf);
                cpu(p.value).is_some()
            } else if is("fault_device_garbage") {
                let seed = match p.value {
                    None => Some(DEFAULT_GARBAGE_SEED),
                    Some(v) => parse_u64(v).filter(|&s| s != 0),
                };
                k.device_garbage = seed.or(k.device_garbage);
                seed.is_some()
            } else if is("serial_flood") {
                let n = p.value.and_then(parse_u64);
                k.serial_flood = n.unwrap_or(k.serial_flood);
                n.is_some()
            } else {
                true
            };
            if !ok {
                k.invalid += 1;
            }
        }
        k
    }

    /// Whether any knob is set.
    pub fn any(&self) -> bool {
        self.note.is_some()
            || self.vmcoreinfo.is_some()
            || self.triple_fault
            || self.nmi_callback_panic.is_some()
            || self.nmi_deaf.is_some()
            || self.device_garbage.is_some()
            || self.serial_flood != 0
    }
}

/// xorshift64: small, no tables, no SSE.
#[derive(Clone, Copy, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero seed (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            DEFAULT_GARBAGE_SEED
        } else {
            seed
        })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Every port range of a device the VMM emulates.
pub use guest_abi::ports::{EMULATED_PORTS as DEVICE_PORTS, I8042_COMMAND};
/// The i8042 reset-pulse command.
const I8042_CMD_RESET: u8 = 0xfe;
/// Reset control register bit 2 (RST_CPU).
const RST_CPU: u8 = 1 << 2;

/// Makes `value` (written with `width` bytes at `port`) harmless where a
/// write would legitimately end or reset the VM or report a panic: a guest
/// may do those, and the test wants the VM to keep running. Everything
/// else goes through as generated.
pub fn defang(port: u16, width: u8, value: u32) -> u32 {
    let byte_at = |p: u16| -> u32 {
        // The mask for the byte of `value` that lands on port `p`.
        match p.checked_sub(port) {
            Some(i) if i < u16::from(width) => 0xff << (8 * u32::from(i)),
            _ => 0,
        }
    };
    let shift_of = |p: u16| 8 * u32::from(p.wrapping_sub(port));
    let mut v = value;
    // PM1a_CNT: SLP_EN (bit 13 of the 16-bit register = bit 5 of byte 1).
    let slp_en_byte = ports::PM1A_CNT_BLK + 1;
    if byte_at(slp_en_byte) != 0 {
        v &= !(u32::from(ports::PM1_CNT_SLP_EN >> 8) << shift_of(slp_en_byte));
    }
    if byte_at(ports::RESET_CONTROL) != 0 {
        v &= !(u32::from(RST_CPU) << shift_of(ports::RESET_CONTROL));
    }
    if byte_at(I8042_COMMAND) != 0
        && (v >> shift_of(I8042_COMMAND)) & 0xff == u32::from(I8042_CMD_RESET)
    {
        v &= !(1 << shift_of(I8042_COMMAND));
    }
    if byte_at(ports::PVPANIC) != 0 {
        let events = u32::from(ports::PVPANIC_PANICKED | ports::PVPANIC_SHUTDOWN);
        v &= !(events << shift_of(ports::PVPANIC));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crashnote::{prstatus_from_frame, SegmentState};
    use crate::x86::trapframe::TrapFrame;
    use guest_abi::elfnote::{CrashNote, CRASH_NOTE_BYTES};

    #[test]
    fn parses_every_knob() {
        let k = FaultKnobs::parse(
            b"quiet fault_note=2:descsz fault-vmcoreinfo=nr_cpus fault_triple_fault \
              fault_nmi_callback_panic=1 fault_nmi_deaf=3 fault_device_garbage=0x55 \
              serial_flood=4096 panic=1",
        );
        assert_eq!(k.note, Some((2, NoteField::Descsz)));
        assert_eq!(k.vmcoreinfo, Some(VmcoreinfoFault::NrCpus));
        assert!(k.triple_fault && k.any());
        assert_eq!(k.nmi_callback_panic, Some(1));
        assert_eq!(k.nmi_deaf, Some(3));
        assert_eq!(k.device_garbage, Some(0x55));
        assert_eq!(k.serial_flood, 4096);
        assert_eq!(k.invalid, 0);
        assert!(!FaultKnobs::parse(b"nr_cpus=2").any());
        assert_eq!(
            FaultKnobs::parse(b"fault_device_garbage").device_garbage,
            Some(DEFAULT_GARBAGE_SEED)
        );
        let bad = FaultKnobs::parse(
            b"fault_note=2 fault_note=x:pid fault_note=1:rip fault_vmcoreinfo=all \
              fault_triple_fault=1 fault_nmi_deaf fault_device_garbage=0 serial_flood=lots",
        );
        assert_eq!(bad.invalid, 8);
        assert!(!bad.any());
    }

    fn saved_note(cpu: usize) -> [u8; CRASH_NOTE_BYTES] {
        let mut n = CrashNote::empty();
        let p = prstatus_from_frame(&TrapFrame::default(), &SegmentState::default(), cpu);
        n.write(&p);
        n.bytes
    }

    #[test]
    fn note_corruptions_hit_their_field() {
        let good = saved_note(2);
        assert_eq!(&good[12..16], b"CORE");
        let mut n = good;
        NoteField::Name.corrupt(&mut n);
        assert_eq!(&n[12..16], b"XORE");
        let mut n = good;
        NoteField::Descsz.corrupt(&mut n);
        assert_eq!(u32::from_le_bytes(n[4..8].try_into().unwrap()), 100);
        let mut n = good;
        NoteField::Pid.corrupt(&mut n);
        assert_eq!(i32::from_le_bytes(n[52..56].try_into().unwrap()), 103);
    }

    #[test]
    fn vmcoreinfo_corruptions_rewrite_one_value() {
        let mut t = *b"OSRELEASE=1\nSYMBOL(crash_notes)=ffff8000\nNUMBER(nr_cpus)=4\n\0";
        assert!(VmcoreinfoFault::CrashNotes.apply(&mut t));
        assert!(VmcoreinfoFault::NrCpus.apply(&mut t));
        assert_eq!(
            &t[..],
            b"OSRELEASE=1\nSYMBOL(crash_notes)=zzzzzzzz\nNUMBER(nr_cpus)=9\n\0"
        );
        assert!(!VmcoreinfoFault::NrCpus.apply(&mut [b'x', b'=', b'1']));
    }

    #[test]
    fn defang_removes_only_the_dangerous_bits() {
        assert_eq!(
            defang(ports::PVPANIC, 1, 0xff),
            0xff & !u32::from(ports::PVPANIC_PANICKED | ports::PVPANIC_SHUTDOWN)
        );
        assert_eq!(defang(ports::RESET_CONTROL, 1, 0x06), 0x02);
        assert_eq!(defang(I8042_COMMAND, 1, 0xfe), 0xff & !1 & 0xfe);
        assert_eq!(defang(I8042_COMMAND, 1, 0xfd), 0xfd);
        // SLP_EN through a 16-bit write at PM1a_CNT and a byte write at +1.
        assert_eq!(defang(ports::PM1A_CNT_BLK, 2, 0xffff), 0xdfff);
        assert_eq!(defang(ports::PM1A_CNT_BLK + 1, 1, 0xff), 0xdf);
        // A 32-bit write at PM1a_EVT+2 (0x602..=0x605) reaches SLP_EN too.
        assert_eq!(defang(ports::PM1A_EVT_BLK + 2, 4, u32::MAX), 0xdfff_ffff);
        assert_eq!(defang(ports::COM1, 4, 0xdead_beef), 0xdead_beef);
        let mut r = XorShift::new(0);
        assert_ne!(r.next_u64(), r.next_u64());
    }
}
