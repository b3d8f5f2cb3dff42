//! What a VM is made of: the library's configuration types.

use std::path::PathBuf;

/// Which kernel to boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Kernel {
    /// The guest kernel built with this VMM ([`crate::GUEST_KERNEL`]).
    #[default]
    Embedded,
    /// A PVH-capable ELF file.
    Path(PathBuf),
}

/// Where the guest's COM1 output goes.
#[derive(Default)]
pub enum SerialOutput {
    /// The VMM's standard output.
    Stdio,
    /// A file, created or truncated.
    File(PathBuf),
    /// Discarded.
    #[default]
    Null,
    /// Any writer (tests capture output this way).
    Writer(Box<dyn std::io::Write + Send>),
}

impl SerialOutput {
    /// Serial output cut into lines (`\n` ends a line, a trailing `\r` is
    /// dropped, bytes that are not UTF-8 are replaced), each handed to
    /// `on_line` as it completes: how tests and the scenario runner read
    /// the guest's console.
    pub fn lines(on_line: impl FnMut(String) + Send + 'static) -> Self {
        SerialOutput::Writer(Box::new(LineSplitter {
            partial: Vec::new(),
            on_line,
        }))
    }
}

/// The writer behind [`SerialOutput::lines`].
struct LineSplitter<F> {
    partial: Vec<u8>,
    on_line: F,
}

impl<F: FnMut(String)> std::io::Write for LineSplitter<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                self.partial.clear();
                (self.on_line)(line);
            } else {
                self.partial.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdio => write!(f, "Stdio"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Null => write!(f, "Null"),
            Self::Writer(_) => write!(f, "Writer(..)"),
        }
    }
}

/// What a guest reset does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnReboot {
    /// Tear the VM down and boot it again from the same configuration.
    #[default]
    Restart,
    /// End `Vmm::run` with [`crate::ExitReason::Reboot`].
    Exit,
}

/// Default guest RAM: 256 MiB.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// A VM's configuration.
#[derive(Debug)]
pub struct VmConfig {
    /// The kernel to boot.
    pub kernel: Kernel,
    /// Number of vCPUs (at least 1, at most KVM's limit).
    pub cpus: u32,
    /// Guest RAM in bytes (a multiple of 4 KiB).
    pub memory: u64,
    /// The guest kernel command line.
    pub cmdline: String,
    /// Where COM1 output goes.
    pub serial: SerialOutput,
    /// What a guest reset does.
    pub on_reboot: OnReboot,
    /// The pvpanic device's supported events (`guest_abi::ports::PVPANIC_*`
    /// bits); 0 means no device and no DSDT entry.
    pub pvpanic_events: u8,
    /// What a pvpanic PANICKED event does ([`DEFAULT_PANIC_ACTION`]).
    pub on_panic: qmp::PanicAction,
    /// Serve QMP on this Unix socket (created 0600).
    pub api_socket: Option<PathBuf>,
}

/// The default panic action: `poweroff`, which is QEMU's default
/// (`-action panic=shutdown`) and libvirt's (`<on_crash>destroy`): a
/// panicked guest does not linger unnoticed, and the `GUEST_PANICKED` event
/// and the stderr line say why the VM ended. Use `pause` to inspect it.
pub const DEFAULT_PANIC_ACTION: qmp::PanicAction = qmp::PanicAction::Poweroff;

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: Kernel::Embedded,
            cpus: 1,
            memory: DEFAULT_MEMORY,
            cmdline: String::new(),
            serial: SerialOutput::Null,
            on_reboot: OnReboot::Restart,
            pvpanic_events: devices::pvpanic::PVPANIC_DEFAULT_EVENTS,
            on_panic: DEFAULT_PANIC_ACTION,
            api_socket: None,
        }
    }
}

/// Errors parsing a size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with an optional K/M/G/T suffix.
    #[error("invalid size {0:?} (expected e.g. 512M, 2G, 65536K)")]
    Invalid(String),
    /// Does not fit in 64 bits.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Parses `512M`, `2G`, `1024K`, `1T` or a plain byte count. Suffixes are
/// binary (K = 1024) and case-insensitive; a trailing `B`/`iB` is allowed.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    let lower = s.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeError::Invalid(text.to_string()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_string()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 1G "), Ok(1 << 30));
    }

    #[test]
    fn bad_sizes_are_errors() {
        for bad in ["", "M", "12X", "-1G", "1.5G", "G1", "0x100", "1 G", "ten"] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("17179869184G"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn default_config_is_the_documented_one() {
        let c = VmConfig::default();
        assert_eq!(c.kernel, Kernel::Embedded);
        assert_eq!((c.cpus, c.memory), (1, 256 << 20));
        assert!(c.cmdline.is_empty());
        assert!(matches!(c.serial, SerialOutput::Null));
        assert_eq!(c.on_reboot, OnReboot::Restart);
    }
}
