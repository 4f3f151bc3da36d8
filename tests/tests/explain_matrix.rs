//! `palisade explain` agrees with every scenario: each pair and port of
//! every matrix of every scenario file (tests/scenarios, shared/scenarios),
//! as written and on three nodes through a Service per pod, gets explain's
//! verdict equal to the expected one, and the compiled maps of the nodes
//! agree with it. No kernel needed: the objects are the runner's.

use std::path::{Path, PathBuf};

use palisade_tests::{explain_check::desk, scenario::Scenario};

fn scenario_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [root.join("scenarios"), root.join("../../shared/scenarios")] {
        collect(&dir, &mut out);
    }
    out.sort();
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

#[test]
fn explain_agrees_with_every_scenario_matrix() {
    let files = scenario_files();
    assert!(files.len() > 40, "scenario files not found: {files:?}");
    let (mut pairs, mut checks, mut scenarios) = (0, 0, 0);
    let mut failures = Vec::new();
    for f in &files {
        let s = Scenario::load(f).expect("scenario");
        if !s.unsupported_kinds().is_empty() {
            // The runner refuses these too.
            continue;
        }
        scenarios += 1;
        for (nodes, via_service) in [(None, false), (Some(3), true)] {
            match desk(&s, nodes, via_service) {
                Ok(r) => {
                    pairs += r.pairs;
                    checks += r.checks;
                    failures.extend(r.wrong);
                    failures.extend(r.maps_mismatch.into_iter().map(|m| format!("maps: {m}")));
                }
                Err(e) => failures.push(format!("{}: {e:#}", f.display())),
            }
        }
    }
    eprintln!("{scenarios} scenarios, {checks} matrices, {pairs} pairs explained");
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_wrong_expectation_is_caught() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/ingress-deny-all.yaml");
    let mut s = Scenario::load(&path).expect("scenario");
    for e in &mut s.expect {
        for r in &mut e.rules {
            r.verdict = match r.verdict {
                palisade_tests::scenario::Verdict::Allow => palisade_tests::scenario::Verdict::Deny,
                palisade_tests::scenario::Verdict::Deny => palisade_tests::scenario::Verdict::Allow,
            };
        }
    }
    let r = desk(&s, None, false).expect("desk");
    assert!(r.pairs > 0);
    assert!(!r.wrong.is_empty(), "flipped verdicts went unnoticed");
}
