//! One row per scenario: the observed columns, the comparison with
//! `[expect]`, and the table and JSON renderings.

use serde::Serialize;

use super::spec::{Count, Expect, Source};

/// What one scenario run showed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Scenario name.
    pub name: String,
    /// What the row teaches.
    pub description: String,
    /// The scenario file.
    pub file: String,
    /// pvpanic events and where they fell relative to kdump.
    pub pvpanic: String,
    /// Where the vmcore came from.
    pub vmcore: Source,
    /// CPUs with a guest crash note in the dump (`None`: no dump to read).
    pub saved: Option<Count>,
    /// CPUs with VMX off and the VMCS flushed.
    pub vmx_off: Option<Count>,
    /// True when the CPU columns come from a host-side dump the runner
    /// took itself because the VMM wrote no vmcore.
    pub runner_dump: bool,
    /// Whether the kmsg dumper's pstore region holds text.
    pub kmsg: Option<bool>,
    /// From the guest's `Kernel panic` line (or the injection) to the
    /// vmcore written.
    pub panic_to_vmcore_ms: Option<u64>,
    /// How the run ended (`vm exited: ...`, `quiet`, `timeout`...).
    pub ended: String,
    /// The VMM's kdump fallback reason, if it reported one.
    pub fallback: Option<String>,
    /// Columns that differ from `[expect]`.
    pub mismatches: Vec<Mismatch>,
    /// The run could not be carried out (the VM did not boot...).
    pub error: Option<String>,
}

/// One column that differs from the expectation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// The `[expect]` key.
    pub field: &'static str,
    /// What the file says.
    pub expected: String,
    /// What the run showed.
    pub got: String,
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn yes_no(v: Option<bool>) -> String {
    match v {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

impl Row {
    /// Whether the row matched its expectation and ran.
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty() && self.error.is_none()
    }

    /// Compares the row with `expect` and records every difference.
    pub fn compare(&mut self, expect: &Expect) {
        let mut m = Vec::new();
        let mut differ = |field, expected: String, got: String| {
            if expected != got {
                m.push(Mismatch {
                    field,
                    expected,
                    got,
                });
            }
        };
        if let Some(p) = &expect.pvpanic {
            differ("pvpanic", p.clone(), self.pvpanic.clone());
        }
        if let Some(s) = expect.vmcore {
            differ("vmcore", s.as_str().into(), self.vmcore.as_str().into());
        }
        if let Some(c) = expect.saved {
            differ("saved", c.to_string(), opt(self.saved));
        }
        if let Some(c) = expect.vmx_off {
            differ("vmx_off", c.to_string(), opt(self.vmx_off));
        }
        if let Some(k) = expect.kmsg {
            differ("kmsg", yes_no(Some(k)), yes_no(self.kmsg));
        }
        if let Some(max) = expect.max_panic_to_vmcore_ms {
            match self.panic_to_vmcore_ms {
                Some(ms) if ms <= max => {}
                got => m.push(Mismatch {
                    field: "max_panic_to_vmcore_ms",
                    expected: format!("<= {max} ms"),
                    got: got.map_or_else(|| "no vmcore".into(), |ms| format!("{ms} ms")),
                }),
            }
        }
        self.mismatches = m;
    }

    fn result(&self) -> String {
        if self.error.is_some() {
            return "ERROR".into();
        }
        if self.mismatches.is_empty() {
            return "match".into();
        }
        let fields: Vec<&str> = self.mismatches.iter().map(|m| m.field).collect();
        format!("MISMATCH({})", fields.join(","))
    }

    fn cells(&self) -> [String; 8] {
        let star = if self.runner_dump { "*" } else { "" };
        [
            self.name.clone(),
            self.pvpanic.clone(),
            self.vmcore.as_str().into(),
            format!("{}{star}", opt(self.saved)),
            format!("{}{star}", opt(self.vmx_off)),
            yes_no(self.kmsg),
            self.panic_to_vmcore_ms
                .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
            self.result(),
        ]
    }
}

/// The whole run, as `--json` writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Schema version (1).
    pub version: u32,
    /// True iff every row ran and matched.
    pub ok: bool,
    /// One per scenario, in the order run.
    pub scenarios: Vec<Row>,
}

const HEADERS: [&str; 8] = [
    "scenario",
    "pvpanic",
    "vmcore",
    "saved",
    "vmx off",
    "kmsg",
    "panic->vmcore",
    "result",
];

impl Report {
    /// A report over `rows`.
    pub fn new(rows: Vec<Row>) -> Self {
        Report {
            version: 1,
            ok: rows.iter().all(Row::ok),
            scenarios: rows,
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serialises")
    }

    /// The table, then one line per mismatch or error, then the footnote
    /// on runner dumps if any row needed one.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let rows: Vec<[String; 8]> = self.scenarios.iter().map(Row::cells).collect();
        let mut width = HEADERS.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(width).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    let _ = write!(s, "{c:<w$}  ");
                }
            }
            s.trim_end().to_string()
        };
        let mut out = String::new();
        out.push_str(&line(&HEADERS.map(String::from)));
        out.push('\n');
        for r in &rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        for row in &self.scenarios {
            if let Some(e) = &row.error {
                let _ = writeln!(out, "{}: error: {e}", row.name);
            }
            for m in &row.mismatches {
                let _ = writeln!(
                    out,
                    "{}: {}: expected {}, got {}",
                    row.name, m.field, m.expected, m.got
                );
            }
        }
        for row in self.scenarios.iter().filter(|r| r.fallback.is_some()) {
            let _ = writeln!(
                out,
                "{}: the VMM fell back to a host-side dump: {}",
                row.name,
                row.fallback.as_deref().unwrap_or_default()
            );
        }
        if self.scenarios.iter().any(|r| r.runner_dump) {
            out.push_str(
                "* no vmcore was produced; the CPU columns come from a host-side dump \
                 the runner took when the run ended\n",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            name: "kawai-fix".into(),
            description: "every CPU saved".into(),
            file: "resources/scenarios/02-kawai-fix.toml".into(),
            pvpanic: "CRASH_LOADED<kdump".into(),
            vmcore: Source::Kdump,
            saved: Some(Count { n: 4, of: 4 }),
            vmx_off: Some(Count { n: 4, of: 4 }),
            runner_dump: false,
            kmsg: Some(true),
            panic_to_vmcore_ms: Some(120),
            ended: "vm exited: poweroff".into(),
            fallback: None,
            mismatches: Vec::new(),
            error: None,
        }
    }

    fn expect_all() -> Expect {
        Expect {
            pvpanic: Some("CRASH_LOADED<kdump".into()),
            vmcore: Some(Source::Kdump),
            saved: Some(Count { n: 4, of: 4 }),
            vmx_off: Some(Count { n: 4, of: 4 }),
            kmsg: Some(true),
            max_panic_to_vmcore_ms: Some(5000),
        }
    }

    #[test]
    fn a_matching_row() {
        let mut r = row();
        r.compare(&expect_all());
        assert!(r.ok(), "{:?}", r.mismatches);
        r.compare(&Expect::default());
        assert!(r.ok());
    }

    #[test]
    fn every_column_can_mismatch() {
        let mut r = row();
        r.pvpanic = "-".into();
        r.vmcore = Source::None;
        r.saved = Some(Count { n: 1, of: 4 });
        r.vmx_off = None;
        r.kmsg = Some(false);
        r.panic_to_vmcore_ms = None;
        r.compare(&expect_all());
        let fields: Vec<&str> = r.mismatches.iter().map(|m| m.field).collect();
        assert_eq!(
            fields,
            [
                "pvpanic",
                "vmcore",
                "saved",
                "vmx_off",
                "kmsg",
                "max_panic_to_vmcore_ms"
            ]
        );
        assert_eq!(r.mismatches[2].got, "1/4");
        assert_eq!(r.mismatches[3].got, "-");
        assert_eq!(r.mismatches[5].got, "no vmcore");
        let mut slow = row();
        slow.panic_to_vmcore_ms = Some(6000);
        slow.compare(&expect_all());
        assert_eq!(slow.mismatches[0].got, "6000 ms");
    }

    #[test]
    fn table_and_json() {
        let good = row();
        let mut bad = row();
        bad.name = "bug-2016".into();
        bad.saved = Some(Count { n: 1, of: 4 });
        bad.runner_dump = true;
        bad.vmcore = Source::None;
        bad.compare(&Expect {
            saved: Some(Count { n: 4, of: 4 }),
            ..Expect::default()
        });
        bad.fallback = Some("kdump did not report a vmcore within 3s".into());
        let report = Report::new(vec![good, bad]);
        assert!(!report.ok);
        let table = report.render();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("scenario "), "{table}");
        assert!(lines[0].contains("vmx off"));
        assert!(lines[1].starts_with("kawai-fix "));
        assert!(lines[1].contains("CRASH_LOADED<kdump"));
        assert!(lines[1].ends_with("match"), "{table}");
        assert!(lines[2].contains(" none "), "{table}");
        assert!(lines[2].contains("1/4*"), "{table}");
        assert!(lines[2].ends_with("MISMATCH(saved)"), "{table}");
        assert_eq!(lines[3], "bug-2016: saved: expected 4/4, got 1/4");
        assert_eq!(
            lines[4],
            "bug-2016: the VMM fell back to a host-side dump: kdump did not report a vmcore within 3s"
        );
        assert!(lines[5].starts_with("* no vmcore"));
        // Columns line up: every row's vmcore cell starts where the header's does.
        let col = lines[0].find("vmcore").unwrap();
        assert_eq!(&lines[1][col..col + 5], "kdump");

        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["ok"], false);
        assert_eq!(v["scenarios"][0]["vmcore"], "kdump");
        assert_eq!(v["scenarios"][0]["saved"], "4/4");
        assert_eq!(v["scenarios"][0]["panic_to_vmcore_ms"], 120);
        assert_eq!(v["scenarios"][1]["runner_dump"], true);
        assert_eq!(v["scenarios"][1]["mismatches"][0]["field"], "saved");
        assert_eq!(v["scenarios"][1]["mismatches"][0]["expected"], "4/4");
    }

    #[test]
    fn an_error_row_fails() {
        let mut r = row();
        r.error = Some("VM creation failed".into());
        let report = Report::new(vec![r]);
        assert!(!report.ok);
        assert!(report
            .render()
            .contains("kawai-fix: error: VM creation failed"));
        assert!(report.render().lines().nth(1).unwrap().ends_with("ERROR"));
    }
}
