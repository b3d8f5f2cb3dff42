#![no_std]
#![no_main]

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a"
    .align 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .align 4
    .long pvh_start32
    .align 4

    .section .text.pvh_entry, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    mov dx, 0x3f8
    mov al, 'H'
    out dx, al
    mov al, 10
    out dx, al
    mov dx, 0x604
    mov ax, 0x2000
    out dx, ax
1:  hlt
    jmp 1b
    .code64
    "#
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
extern "C" fn rust_eh_personality() {}
