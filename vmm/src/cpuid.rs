//! Per-vCPU CPUID: KVM's supported set, with this vCPU's APIC ID and the
//! hypervisor timing leaf the guest uses to learn the TSC frequency.

use guest_abi::cpuid::{HYPERVISOR_BASE_LEAF, TSC_KHZ_LEAF};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1: feature information (EBX has the initial APIC ID).
const LEAF_FEATURES: u32 = 1;
/// Leaves 0xB and 0x1F: extended topology (EDX = x2APIC ID).
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// Leaf 1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EBX: initial APIC ID in bits 31:24, logical CPU count in 23:16.
const EBX_APIC_ID_SHIFT: u32 = 24;
const EBX_CPU_COUNT_SHIFT: u32 = 16;
const EBX_LOW_16: u32 = 0xffff;
/// The LAPIC timer ticks at KVM's 1 GHz bus clock (1 ns period).
pub const LAPIC_BUS_KHZ: u32 = 1_000_000;
/// "KVMKVMKVM\0\0\0", as KVM reports at 0x4000_0000.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Errors building a vCPU's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The entry list would exceed KVM's limit.
    #[error("too many CPUID entries")]
    TooManyEntries,
}

/// What makes one vCPU's CPUID differ from another's.
#[derive(Clone, Copy, Debug)]
pub struct CpuidParams {
    /// KVM vCPU index, also its APIC ID.
    pub vcpu_id: u32,
    /// Number of vCPUs in the VM.
    pub cpus: u32,
    /// TSC frequency in kHz (0 if KVM could not tell).
    pub tsc_khz: u32,
}

/// Adapts KVM's supported CPUID for one vCPU.
pub fn vcpu_cpuid(supported: &CpuId, p: CpuidParams) -> Result<CpuId, CpuidError> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let mut has_base = false;
    entries.retain(|e| e.function != TSC_KHZ_LEAF);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                let count = p.cpus.min(0xff);
                e.ebx = (e.ebx & EBX_LOW_16)
                    | (p.vcpu_id << EBX_APIC_ID_SHIFT)
                    | (count << EBX_CPU_COUNT_SHIFT);
                e.ecx |= ECX_HYPERVISOR;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => e.edx = p.vcpu_id,
            HYPERVISOR_BASE_LEAF => {
                has_base = true;
                e.eax = e.eax.max(TSC_KHZ_LEAF);
            }
            _ => {}
        }
    }
    if !has_base {
        entries.push(kvm_cpuid_entry2 {
            function: HYPERVISOR_BASE_LEAF,
            eax: TSC_KHZ_LEAF,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
    entries.push(kvm_cpuid_entry2 {
        function: TSC_KHZ_LEAF,
        eax: p.tsc_khz,
        ebx: LAPIC_BUS_KHZ,
        ..Default::default()
    });
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0001_0800,
            edx: 0x77,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    fn params(vcpu_id: u32) -> CpuidParams {
        CpuidParams {
            vcpu_id,
            cpus: 8,
            tsc_khz: 2_400_000,
        }
    }

    #[test]
    fn apic_ids_follow_the_vcpu_index() {
        let supported = CpuId::from_entries(&[leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1)]).unwrap();
        for id in [0, 3, 7] {
            let c = vcpu_cpuid(&supported, params(id)).unwrap();
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, id);
            assert_eq!((l1.ebx >> 16) & 0xff, 8);
            assert_eq!(l1.ebx & 0xffff, 0x0800, "brand/clflush bits kept");
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_eq!(find(&c, 0xb, 0).edx, id);
            assert_eq!(find(&c, 0xb, 1).edx, id);
        }
    }

    #[test]
    fn timing_leaf_is_added_and_announced() {
        let kvm_base = kvm_cpuid_entry2 {
            function: HYPERVISOR_BASE_LEAF,
            eax: 0x4000_0001,
            ebx: KVM_SIGNATURE[0],
            ..Default::default()
        };
        let supported = CpuId::from_entries(&[leaf(1, 0), kvm_base]).unwrap();
        let c = vcpu_cpuid(&supported, params(0)).unwrap();
        assert_eq!(find(&c, HYPERVISOR_BASE_LEAF, 0).eax, TSC_KHZ_LEAF);
        let t = find(&c, TSC_KHZ_LEAF, 0);
        assert_eq!((t.eax, t.ebx), (2_400_000, LAPIC_BUS_KHZ));
    }

    #[test]
    fn base_leaf_is_created_when_kvm_has_none() {
        let supported = CpuId::from_entries(&[leaf(1, 0)]).unwrap();
        let c = vcpu_cpuid(&supported, params(1)).unwrap();
        let base = find(&c, HYPERVISOR_BASE_LEAF, 0);
        assert_eq!(base.eax, TSC_KHZ_LEAF);
        assert_eq!(base.ebx, KVM_SIGNATURE[0]);
        // Building twice does not duplicate the timing leaf.
        let again = vcpu_cpuid(&c, params(1)).unwrap();
        let n = again
            .as_slice()
            .iter()
            .filter(|e| e.function == TSC_KHZ_LEAF)
            .count();
        assert_eq!(n, 1);
    }
}
