//! Golden files: larger models compiled and rendered as text. Set
//! PALISADE_BLESS=1 to rewrite the expected files after a deliberate change.

mod support;

use std::path::PathBuf;

use palisade_agent::policy::{Profile, compile, dump};

#[test]
fn compiled_states_match_the_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("PALISADE_BLESS").is_some();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no golden inputs in {}", dir.display());
    let mut failures = Vec::new();
    for input in inputs {
        let text = std::fs::read_to_string(&input).expect("read input");
        let model = support::model(&text);
        let mut profile = Profile::default();
        if text.contains("# profile: default-deny") {
            profile.default_deny = true;
        }
        let got = dump::render(&compile(&model, &support::node(), &profile));
        let expected_path = input.with_extension("txt");
        if bless {
            std::fs::write(&expected_path, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if want != got {
            failures.push(format!(
                "{}:\n--- expected\n{want}\n--- got\n{got}",
                expected_path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatch (PALISADE_BLESS=1 to accept):\n{}",
        failures.join("\n")
    );
}
