//! The whole shipped matrix (resources/scenarios/) through the real binary:
//! every row must match its [expect]. The seeds' claims, end to end.

use std::process::Command;

#[test]
fn every_shipped_scenario_matches() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["scenario", "run", "--json", "-"])
        .output()
        .expect("run vmm");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    let rows = v["scenarios"].as_array().expect("rows");
    assert!(rows.len() >= 12, "{} rows", rows.len());
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| {
            !r["mismatches"].as_array().is_some_and(|m| m.is_empty()) || !r["error"].is_null()
        })
        .map(|r| r["name"].as_str().unwrap_or("?"))
        .collect();
    assert!(failed.is_empty(), "rows not matching: {failed:?}\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
