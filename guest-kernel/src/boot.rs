//! Entry: the PVH note, the 32-bit entry, the switch to long mode, and the
//! AP real-mode trampoline. Everything here runs before Rust.
//!
//! The boot page tables and the boot GDT are data computed at compile time
//! (no loop builds them), so the path from the PVH entry to `kmain` is a few
//! dozen instructions.

use core::arch::global_asm;
use core::cell::UnsafeCell;

use guest_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY;
use guest_kernel::x86::descriptors::{BOOT_CS32, BOOT_GDT, KERNEL_CS, KERNEL_DS};
use guest_kernel::x86::layout::PAGE_TABLES;
use guest_kernel::x86::paging::{boot_page_tables, BootPageTables};

use crate::arch::percpu::KERNEL_STACK_SIZE;

// The VMMKEXEC note's name is spelled out in the asm below.
const _: () = assert!(guest_abi::kexec::NOTE_NAME.len() == 8);

/// Where the AP trampoline is copied: SIPI vector 0x08. Below 1 MiB, above
/// where QEMU/SeaBIOS and our VMM put boot data (start_info and memmap at
/// 0x6000-0x7fff, command line at 0x20000); checked against the memory map.
pub const TRAMPOLINE_ADDR: u64 = guest_abi::boot::AP_TRAMPOLINE_ADDR;

/// The boot page tables, at the fixed address `layout::PAGE_TABLES`.
#[repr(C, align(4096))]
pub struct PageTables(UnsafeCell<BootPageTables>);

// SAFETY: only the MMU touches these tables (setting accessed/dirty bits);
// Rust code never reads or writes them after the build computed them.
unsafe impl Sync for PageTables {}

/// Exported so the linker script can assert it landed at `PAGE_TABLES`.
#[no_mangle]
#[link_section = ".boot.page_tables"]
pub static BOOT_PAGE_TABLES: PageTables =
    PageTables(UnsafeCell::new(boot_page_tables(PAGE_TABLES)));

#[repr(C, align(16))]
struct Gdt([u64; 4]);

/// The boot GDT (null, code64, data, code32), shared by the BSP entry and
/// the AP trampoline. Each CPU then loads its own GDT with a TSS.
#[no_mangle]
static BOOT_GDT_TABLE: Gdt = Gdt(BOOT_GDT);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The trampoline's code, to copy to [`TRAMPOLINE_ADDR`].
pub fn trampoline_code() -> &'static [u8] {
    // SAFETY: both symbols delimit the trampoline blob in `.rodata`.
    unsafe {
        let start = &raw const ap_trampoline_start;
        let end = &raw const ap_trampoline_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

// Register contracts:
//
// pvh_start32 (PVH entry): flat 32-bit protected mode, paging off,
//   interrupts off, ebx = hvm_start_info physical address.
//   Calls kmain(rdi = start_info, rsi = 0) on CPU 0's kernel stack; never
//   returns.
// kexec_entry64 (the capture kernel's entry, named by the VMMKEXEC note;
//   the first kernel jumps to the VMM's copy of it, guest_abi::kexec):
//   64-bit mode, interrupts off, rdi = the capture kernel's CR3 (the VMM's
//   page tables), rsi = its hvm_start_info physical address. Position
//   independent: it runs at the copy's physical address, identity-mapped in
//   both the old and the new page tables. Loads CR3, then jumps to
//   capture_start64 at its link-time address (which the new tables map onto
//   the copy). Clobbers rax.
// capture_start64: loads the boot GDT, CPU 0's kernel stack, reloads CS
//   (lretq) and the data segments, and calls kmain(rdi = start_info,
//   rsi = 1: entered by kexec); never returns. Every register but rsi is
//   taken as garbage from the first kernel.
// ap_start32 (from the trampoline): flat 32-bit protected mode, data
//   segments = KERNEL_DS. Finds its CPU number from its LAPIC's ID in
//   APIC_TO_CPU (filled by the BSP), takes that CPU's kernel stack and calls
//   ap_main(rdi = cpu). An unknown APIC ID parks the CPU (cli; hlt).
// enter_long_mode: in esi = argument to keep, ebp = 64-bit continuation.
//   Enables PAE, loads CR3 with the prebuilt tables, sets EFER.LME (and NXE
//   if the CPU has NX), turns on paging, loads the boot GDT and far-jumps to
//   64-bit code with flat data segments; clobbers eax, ebx, ecx, edx.
global_asm!(
    r#"
    .pushsection .note.Xen, "a"
    .balign 4
    .long 4
    .long 4
    .long {note_type}
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4
    .popsection

    .globl __layout_page_tables
    .set __layout_page_tables, {page_tables}

    /* VMMKEXEC note (guest_abi::kexec): desc = kexec_entry64's link-time
       address. */
    .pushsection .note.vmmkexec, "a"
    .balign 4
    .long 9                         /* namesz: "VMMKEXEC" + NUL */
    .long 8                         /* descsz */
    .long {kexec_note_type}
    .asciz "VMMKEXEC"
    .balign 4
    .quad kexec_entry64
    .balign 4
    .popsection

    .pushsection .text.boot32, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    mov %ebx, %esi
    mov $bsp_start64, %ebp
    jmp enter_long_mode

    .globl ap_start32
ap_start32:
    xor %esi, %esi
    mov $ap_start64, %ebp

enter_long_mode:
    mov %cr4, %eax
    or $0x20, %eax                  /* CR4.PAE */
    mov %eax, %cr4
    mov ${page_tables}, %eax
    mov %eax, %cr3
    mov $0x80000001, %eax           /* NX supported? */
    cpuid
    mov $0x100, %eax                /* EFER.LME */
    bt $20, %edx
    jnc 1f
    or $0x800, %eax                 /* EFER.NXE */
1:  mov %eax, %ebx
    mov $0xc0000080, %ecx           /* IA32_EFER */
    rdmsr
    or %ebx, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* CR0.PG | CR0.PE */
    mov %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp ${cs64}, $2f
    .code64
2:  mov ${ds}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov %esi, %esi                  /* upper halves are undefined after */
    mov %ebp, %ebp                  /* the mode switch: zero-extend */
    jmp *%rbp

bsp_start64:
    lea KERNEL_STACKS+{stack_size}(%rip), %rsp
    mov %rsi, %rdi
    xor %esi, %esi
    xor %ebp, %ebp
    call kmain
    ud2

    .globl kexec_entry64
kexec_entry64:
    mov %rdi, %cr3
    movabs $capture_start64, %rax
    jmp *%rax

capture_start64:
    lgdt boot_gdt_ptr(%rip)
    lea KERNEL_STACKS+{stack_size}(%rip), %rsp
    pushq ${cs64}
    lea 4f(%rip), %rax
    pushq %rax
    lretq
4:  mov ${ds}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov %rsi, %rdi
    mov $1, %esi
    xor %ebp, %ebp
    call kmain
    ud2

ap_start64:
    mov LAPIC_BASE(%rip), %rax
    mov 0x20(%rax), %ebx            /* LAPIC ID register */
    shr $24, %ebx                   /* xAPIC ID */
    lea APIC_TO_CPU(%rip), %rax
    movzbl (%rax,%rbx), %edi        /* CPU number, 0xff if unknown */
    cmp $0xff, %edi
    je 3f
    lea 1(%rdi), %rax
    imul ${stack_size}, %rax, %rax
    lea KERNEL_STACKS(%rip), %rsp
    add %rax, %rsp
    xor %ebp, %ebp
    call ap_main
3:  cli
    hlt
    jmp 3b

    .balign 8
boot_gdt_ptr:
    .word 31
    .quad BOOT_GDT_TABLE
    .popsection

    /* The AP trampoline, copied to {tramp} and entered by SIPI in real mode
       with CS = {tramp} >> 4, IP = 0. Loads the boot GDT (through a pointer
       inside the copy), enters 32-bit protected mode, jumps to ap_start32. */
    .pushsection .rodata.trampoline, "a"
    .globl ap_trampoline_start
    .globl ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl ({tramp} + tramp_gdt_ptr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax                     /* CR0.PE */
    mov %eax, %cr0
    ljmpl ${cs32}, ${tramp} + tramp_pm32 - ap_trampoline_start
    .code32
tramp_pm32:
    mov ${ds}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $ap_start32, %eax
    jmp *%eax
    .balign 8
tramp_gdt_ptr:
    .word 31
    .long BOOT_GDT_TABLE
ap_trampoline_end:
    .code64
    .popsection
    "#,
    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
    kexec_note_type = const guest_abi::kexec::NT_KEXEC_ENTRY64,
    page_tables = const PAGE_TABLES,
    cs64 = const KERNEL_CS,
    cs32 = const BOOT_CS32,
    ds = const KERNEL_DS,
    stack_size = const KERNEL_STACK_SIZE,
    tramp = const TRAMPOLINE_ADDR,
    options(att_syntax),
);
