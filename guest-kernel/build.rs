//! Link the kernel binary as a freestanding static ELF at its load address.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=linker.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=4096",
        &format!("-Wl,-T,{dir}/linker.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
