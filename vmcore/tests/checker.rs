//! Checker verdicts on synthetic guests.

mod common;

use common::*;
use guest_abi::elfnote::{reg, CrashNote, ElfPrstatus};
use vmcore::{check, info, CheckOptions, CheckReport, Symbols, Verdict, Vmcore};

fn run(g: &Guest, name: &str) -> (CheckReport, Vmcore) {
    let dir = test_dir(name);
    let core = Vmcore::open(&dump(g, &dir)).expect("parses");
    (check(&core, &CheckOptions::default()), core)
}

#[test]
fn all_saved_and_vmx_off_passes() {
    let (r, _) = run(&guest(&[0, 1, 2, 3], &[]), "check-pass");
    assert!(r.ok, "{}", r.render());
    assert!(r.failures.is_empty());
    assert_eq!(r.vcpus.len(), 4);
    for v in &r.vcpus {
        assert_eq!(v.guest_note.verdict, Verdict::Pass);
        assert_eq!(v.guest_context.verdict, Verdict::Pass);
        assert_eq!(v.vmx.verdict, Verdict::Pass);
        assert_eq!(v.guest_rip, Some(TEXT.0 + 0x100 * v.vcpu as u64));
    }
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
    assert_eq!(json["version"], 1);
    assert_eq!(json["ok"], true);
    assert_eq!(json["vcpus"][2]["vmx"]["verdict"], "pass");
    assert_eq!(json["checks"][0]["name"], "structure");
}

#[test]
fn bug_2016_shape_fails_on_exactly_the_other_cpus() {
    // Only the panicking CPU 2 saved its registers and turned VMX off.
    let (r, _) = run(&guest(&[2], &[0, 1, 3]), "check-2016");
    assert!(!r.ok);
    for v in &r.vcpus {
        let expect = if v.vcpu == 2 {
            Verdict::Pass
        } else {
            Verdict::Missing
        };
        assert_eq!(v.guest_note.verdict, expect, "vcpu {}", v.vcpu);
        let expect = if v.vcpu == 2 {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        assert_eq!(v.vmx.verdict, expect, "vcpu {}", v.vcpu);
        assert_eq!(v.host_note.verdict, Verdict::Pass);
    }
    assert_eq!(r.failures.len(), 6, "{:?}", r.failures);
    assert!(r.render().contains("VMX left on"));
}

#[test]
fn guest_that_never_panicked_reports_missing_not_corrupt() {
    let (r, _) = run(&guest(&[], &[]), "check-nopanic");
    assert!(!r.ok);
    for v in &r.vcpus {
        assert_eq!(v.guest_note.verdict, Verdict::Missing);
        assert_eq!(v.guest_context.verdict, Verdict::Skipped);
    }
    let mut g = guest(&[], &[]);
    g.vmcoreinfo = None;
    let (r, _) = run(&g, "check-novmcoreinfo");
    assert!(r
        .vcpus
        .iter()
        .all(|v| v.guest_note.verdict == Verdict::Missing));
    assert!(r
        .checks
        .iter()
        .any(|c| c.name == "vmcoreinfo" && c.result.verdict == Verdict::Missing));
}

#[test]
fn scribbled_note_is_corrupt() {
    let mut g = guest(&[0, 1, 2, 3], &[]);
    let at = (CRASH_NOTES + STRIDE) as usize;
    g.low[at + 8] = 7; // n_type of CPU 1's note
    let (r, _) = run(&g, "check-corrupt");
    assert_eq!(r.vcpus[1].guest_note.verdict, Verdict::Corrupt);
    assert_eq!(r.vcpus[0].guest_note.verdict, Verdict::Pass);
}

#[test]
fn rip_outside_text_or_user_cs_fails_context() {
    let mut g = guest(&[0, 1, 2, 3], &[]);
    for (cpu, rip, cs) in [(1u32, 0x40_0000u64, 0x08u64), (3, TEXT.0, 0x33)] {
        let mut st = ElfPrstatus::zeroed();
        st.pr_pid = cpu as i32 + 1;
        st.pr_reg[reg::RIP] = rip;
        st.pr_reg[reg::CS] = cs;
        let mut n = CrashNote::empty();
        n.write(&st);
        let at = (CRASH_NOTES + STRIDE * cpu as u64) as usize;
        g.low[at..at + n.bytes.len()].copy_from_slice(&n.bytes);
    }
    let (r, _) = run(&g, "check-rip");
    assert!(!r.ok);
    assert_eq!(r.vcpus[1].guest_context.verdict, Verdict::Fail);
    assert!(r.vcpus[1].guest_context.detail.contains("outside text"));
    assert_eq!(r.vcpus[3].guest_context.verdict, Verdict::Fail);
    assert!(r.vcpus[3].guest_context.detail.contains("CS"));
    assert_eq!(r.vcpus[0].guest_context.verdict, Verdict::Pass);
    assert_eq!(r.failures.len(), 2);
}

#[test]
fn cpu_count_mismatch_fails_agreement() {
    let mut g = guest(&[0, 1, 2, 3], &[]);
    g.cpus.truncate(3);
    let (r, _) = run(&g, "check-agree");
    let agree = r
        .checks
        .iter()
        .find(|c| c.name == "cpu_sets_agree")
        .expect("check present");
    assert_eq!(agree.result.verdict, Verdict::Fail);
}

#[test]
fn info_shows_registers_kmsg_pvpanic_and_symbols() {
    let (_, core) = run(&guest(&[0, 2], &[1]), "info");
    // Symbols from a real ELF: this test binary itself.
    let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read exe");
    let syms = Symbols::from_elf(&exe).expect("parse own ELF");
    let i = info(&core, Some(&syms));
    assert_eq!(i.cpus.iter().filter(|c| c.source == "host").count(), 4);
    assert_eq!(i.cpus.iter().filter(|c| c.source == "guest").count(), 2);
    assert_eq!(i.kmsg.as_deref(), Some("[0] booting\n[1] panic: test\n"));
    assert_eq!(i.panic_cpu, Some(2));
    assert_eq!(i.pvpanic.len(), 2);
    assert_eq!(i.pvpanic[0].names, vec!["CRASH_LOADED"]);
    assert!(i.vmx[1].vmx_on);
    let text = i.render();
    assert!(text.contains("VMX state"));
    assert!(text.contains("OSRELEASE=0.1.0-test"));
    // Symbolisation against the test binary's own function.
    let f = info_shows_registers_kmsg_pvpanic_and_symbols as fn() as usize as u64;
    let base = exe_load_bias();
    let name = syms.lookup(f - base).expect("own symbol");
    assert!(name.contains("info_shows_registers"), "{name}");
}

/// The PIE load bias: runtime address minus link-time address.
fn exe_load_bias() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let exe = std::env::current_exe().expect("exe");
    let line = maps
        .lines()
        .find(|l| l.ends_with(exe.to_str().expect("utf8")))
        .expect("exe mapped");
    let start = u64::from_str_radix(line.split('-').next().expect("range"), 16).expect("hex");
    let offset =
        u64::from_str_radix(line.split_whitespace().nth(2).expect("off"), 16).expect("hex");
    start - offset
}

#[test]
fn stopped_cpus_must_be_parked_in_the_stop_loop() {
    let mut g = guest(&[0, 1, 2, 3], &[]);
    // Host RIPs are TEXT.0 + 0x40 + vcpu; the loop covers vCPUs 0..=2's.
    let extra = format!(
        "SYMBOL(stop_loop_start)={:x}\nSYMBOL(stop_loop_end)={:x}\n",
        TEXT.0 + 0x40,
        TEXT.0 + 0x42
    );
    g.vmcoreinfo.as_mut().expect("vmcoreinfo").push_str(&extra);
    let (r, _) = run(&g, "check-parked");
    let parked: Vec<Verdict> = r.vcpus.iter().map(|v| v.host_parked.verdict).collect();
    // vCPU 2 panicked (SYMBOL(panic_cpu) holds 2).
    assert_eq!(
        parked,
        vec![
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Skipped,
            Verdict::Fail
        ]
    );
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    assert!(r.failures[0].contains("host_parked"));
}
