//! `vmm scenario run`: the scenario matrix of issue 6.
//!
//! Each scenario file ([`spec`]) describes one VM (CPUs, memory, the guest's
//! panic knobs, the crash, the `--on-panic` action) and, optionally, the row
//! it must produce. [`runner`] runs each in a fresh VM in this process and
//! reads the row back from the VMM's notifications and the vmcore;
//! [`report`] compares it with the expectation and renders the table or
//! JSON. Scenarios run one after the other.

pub mod report;
pub mod runner;
pub mod spec;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use report::{Mismatch, Report, Row};
pub use runner::{pvpanic_column, run_scenario, Mark, RunOptions};
pub use spec::{Count, Expect, Scenario, ScenarioFile, Source};

/// Errors reading scenario files or writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A file or directory could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a key or value the format does not have.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (names the key and its line).
        message: String,
    },
    /// Well-formed, but not a scenario that can run.
    #[error("{}: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Two files use the same name.
    #[error("{} and {} are both named {name:?}", first.display(), second.display())]
    DuplicateName {
        /// The name.
        name: String,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
    /// No scenario files to run.
    #[error("no scenario files in {}", dir.display())]
    Empty {
        /// Where they were looked for.
        dir: PathBuf,
    },
    /// The JSON report could not be written.
    #[error("cannot write {}", path.display())]
    WriteJson {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `vmm scenario` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ScenarioCommand {
    /// Run scenario files, each in a fresh VM, and print one row per
    /// scenario (pvpanic vs kdump, vmcore source, CPUs saved, VMX off, kmsg
    /// dump, panic-to-vmcore time), compared with each file's [expect].
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
}

const RUN_HELP: &str = "\
Exit codes: 0 every row matched its [expect]; 1 a row did not match (each
mismatching field is named) or could not run; 2 bad arguments or a bad
scenario file (the file and key are named).";

/// Flags of `vmm scenario run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario files [default: every resources/scenarios/*.toml, from the
    /// current directory if it has one, else from this build's source tree].
    #[arg(value_name = "FILES")]
    pub files: Vec<PathBuf>,
    /// Also write the rows as JSON to PATH; `-` writes JSON to stdout and
    /// the table to stderr.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<PathBuf>,
    /// Longest each scenario may run, boot included, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

/// The shipped scenario directory: `./resources/scenarios` if present,
/// else the one in this build's source tree.
pub fn default_dir() -> PathBuf {
    let here = Path::new("resources/scenarios");
    if here.is_dir() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/scenarios")
}

/// Reads every file (or the default directory's), all before any runs.
pub fn load_all(files: &[PathBuf]) -> Result<Vec<ScenarioFile>, ScenarioError> {
    let paths = if files.is_empty() {
        let dir = default_dir();
        let found = spec::files_in(&dir)?;
        if found.is_empty() {
            return Err(ScenarioError::Empty { dir });
        }
        found
    } else {
        files.to_vec()
    };
    let mut loaded: Vec<ScenarioFile> = Vec::new();
    for path in paths {
        let file = Scenario::load(&path)?;
        if let Some(other) = loaded
            .iter()
            .find(|f| f.scenario.name == file.scenario.name)
        {
            return Err(ScenarioError::DuplicateName {
                name: file.scenario.name,
                first: other.path.clone(),
                second: path,
            });
        }
        loaded.push(file);
    }
    Ok(loaded)
}

/// Runs `vmm scenario ...`; returns the exit code.
pub fn run(cmd: &ScenarioCommand, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let ScenarioCommand::Run(args) = cmd;
    let files = match load_all(&args.files) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "vmm: error: {}", crate::dump::error_chain(&e));
            return crate::exit_code::BAD_INPUT;
        }
    };
    let opts = RunOptions {
        timeout: Duration::from_secs(args.timeout),
        ..RunOptions::default()
    };
    let mut rows = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let started = Instant::now();
        let row = run_scenario(file, &opts);
        let _ = writeln!(
            err,
            "scenario {}/{} {}: {} ({}, {:.1} s)",
            i + 1,
            files.len(),
            row.name,
            if row.ok() { "ok" } else { "FAILED" },
            row.ended,
            started.elapsed().as_secs_f64()
        );
        rows.push(row);
    }
    let report = Report::new(rows);
    let table = report.render();
    match args.json.as_deref() {
        Some(p) if p == Path::new("-") => {
            let _ = writeln!(out, "{}", report.to_json());
            let _ = write!(err, "{table}");
        }
        Some(p) => {
            let _ = write!(out, "{table}");
            if let Err(source) = std::fs::write(p, report.to_json() + "\n") {
                let e = ScenarioError::WriteJson {
                    path: p.to_path_buf(),
                    source,
                };
                let _ = writeln!(err, "vmm: error: {}", crate::dump::error_chain(&e));
                return crate::exit_code::VMM_ERROR;
            }
        }
        None => {
            let _ = write!(out, "{table}");
        }
    }
    if report.ok {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvpanic_positions() {
        use Mark::*;
        assert_eq!(pvpanic_column(&[]), "-");
        assert_eq!(pvpanic_column(&[Kdump]), "-");
        assert_eq!(
            pvpanic_column(&[Pvpanic("CRASH_LOADED"), Kdump]),
            "CRASH_LOADED<kdump"
        );
        assert_eq!(
            pvpanic_column(&[Kdump, Pvpanic("PANICKED")]),
            "kdump<PANICKED"
        );
        assert_eq!(
            pvpanic_column(&[Pvpanic("PANICKED")]),
            "PANICKED (no kdump)"
        );
        assert_eq!(
            pvpanic_column(&[Pvpanic("CRASH_LOADED"), Kdump, Pvpanic("PANICKED")]),
            "CRASH_LOADED<kdump, kdump<PANICKED"
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let dir = std::env::temp_dir().join(format!("vmm-scenario-dup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let text = "name = \"same\"\ndescription = \"d\"\n[crash]\ntype = \"PANIC\"\n";
        let (a, b) = (dir.join("a.toml"), dir.join("b.toml"));
        std::fs::write(&a, text).unwrap();
        std::fs::write(&b, text).unwrap();
        let e = load_all(&[a, b]).unwrap_err().to_string();
        assert!(
            e.contains("a.toml") && e.contains("b.toml") && e.contains("same"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_matrix_parses() {
        let files = load_all(&[]).expect("resources/scenarios parses");
        assert!(files.len() >= 12, "{} scenarios", files.len());
        for f in &files {
            assert!(
                f.scenario.expect.is_some(),
                "{}: no [expect]",
                f.path.display()
            );
        }
    }

    #[test]
    fn a_bad_file_exits_2_naming_it() {
        let dir = std::env::temp_dir().join(format!("vmm-scenario-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(
            &f,
            "name = \"x\"\ndescription = \"d\"\nfoo = 1\n[crash]\ntype = \"PANIC\"\n",
        )
        .unwrap();
        let cmd = ScenarioCommand::Run(RunArgs {
            files: vec![f],
            json: None,
            timeout: 5,
        });
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run(&cmd, &mut out, &mut err), 2);
        let err = String::from_utf8(err).unwrap();
        assert!(err.contains("bad.toml") && err.contains("foo"), "{err}");
        assert!(out.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
