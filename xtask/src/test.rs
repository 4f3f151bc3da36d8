//! `cargo xtask test`: setup, then every check and test in order. Each
//! stage's passes and failures are added up; the last line printed is
//! `N passed, M failed`. Nothing is skipped: a stage that cannot run
//! (no root, no kernel feature) fails and says why.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::{
    exec::{build_binaries, cargo, describe, root},
    setup,
};

#[derive(clap::Args, Default)]
pub(crate) struct Options {
    /// Skip the end-to-end scenarios (for a quick local loop; CI runs them).
    #[arg(long)]
    pub no_scenarios: bool,
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    failures: Vec<String>,
}

impl Tally {
    fn stage(&mut self, name: &str, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push(name.to_string());
        }
    }
}

/// Runs a command, echoing its stdout, and returns (success, stdout lines).
fn tee(cmd: &mut Command) -> anyhow::Result<(bool, Vec<String>)> {
    println!("==> {}", describe(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running `{}`", describe(cmd)))?;
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        lines.push(line);
    }
    Ok((child.wait()?.success(), lines))
}

/// Adds up `test result: ok. N passed; M failed` lines of cargo test.
fn count_cargo_tests(lines: &[String]) -> (u64, u64) {
    let mut p = 0;
    let mut f = 0;
    for l in lines.iter().filter(|l| l.starts_with("test result:")) {
        let num = |word: &str| {
            l.split(';')
                .find(|part| part.trim_end().ends_with(word))
                .and_then(|part| part.split_whitespace().rev().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        p += num("passed");
        f += num("failed");
    }
    (p, f)
}

fn cargo_tests(t: &mut Tally, name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    let (ok, lines) = tee(cmd)?;
    let (p, f) = count_cargo_tests(&lines);
    t.passed += p;
    t.failed += f;
    if !ok && f == 0 {
        // A build failure or a crash: count the stage itself.
        t.stage(name, false);
    } else if f > 0 {
        t.failures.push(name.to_string());
    }
    Ok(())
}

/// Scenario directories the suite runs, each in name order.
const SCENARIO_DIRS: &[&str] = &[
    "../shared/scenarios/seeds",
    "../shared/scenarios/calico",
    "../shared/scenarios/services",
    "tests/scenarios",
    "tests/scenarios/conformance",
    "tests/scenarios/services",
];

/// The modes the suite runs in: as written, and spread over three nodes
/// with every pod probed through a Service of its own.
const SCENARIO_MODES: &[(&str, &[&str])] = &[
    ("scenarios", &[]),
    (
        "scenarios (3 nodes, via Services)",
        &["--nodes", "3", "--via-service"],
    ),
];

/// The suite's scenario files: `SCENARIO_DIRS` in order, each in name order.
pub(crate) fn scenario_files() -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in SCENARIO_DIRS.iter().map(|d| root().join(d)) {
        let dir = &dir;
        let rd = std::fs::read_dir(dir)
            .with_context(|| format!("reading scenarios in {}", dir.display()))?;
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        v.sort();
        files.extend(v);
    }
    Ok(files)
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    setup::run(&setup::Options::default())?;
    let mut t = Tally::default();

    let (ok, _) = tee(cargo().args(["fmt", "--all", "--", "--check"]))?;
    t.stage("cargo fmt (workspace)", ok);
    let (ok, _) =
        tee(cargo().args(["fmt", "--manifest-path", "ebpf/Cargo.toml", "--", "--check"]))?;
    t.stage("cargo fmt (ebpf)", ok);
    let (ok, _) = tee(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    t.stage("clippy (host)", ok);
    let (ok, _) = tee(cargo()
        .current_dir(root().join("ebpf"))
        .env("RUSTC_BOOTSTRAP", "1")
        // Its own target dir: a build inside ebpf/ would make the agent's
        // build script (which watches ebpf/) rebuild the programs every time.
        .args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(root().join("target/bpf-clippy"))
        .args(["--", "-D", "warnings"]))?;
    t.stage("clippy (bpfel-unknown-none)", ok);

    cargo_tests(
        &mut t,
        "unit tests",
        cargo().args(["test", "--workspace", "--exclude", "palisade-tests"]),
    )?;

    // The privileged tests and the scenarios run the real agent binary.
    let bin = build_binaries(false)?;
    let (agent, harness) = (bin.join("palisade"), bin.join("palisade-scenario"));
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    if root_user {
        cargo_tests(
            &mut t,
            "privileged tests",
            cargo().args([
                "test",
                "--package",
                "palisade-tests",
                "--",
                "--test-threads=1",
            ]),
        )?;
    } else {
        println!(
            "privileged tests: FAILED: they need root (eBPF load, network namespaces); run as root"
        );
        t.stage("privileged tests (need root)", false);
    }

    if o.no_scenarios {
        println!("scenarios: not run (--no-scenarios)");
    } else {
        let files = scenario_files()?;
        for (stage, args) in SCENARIO_MODES {
            let (_, lines) = tee(Command::new(&harness)
                .arg("--agent")
                .arg(&agent)
                .args(*args)
                .args(&files)
                .current_dir(root()))?;
            let last = lines
                .iter()
                .rev()
                .find(|l| l.ends_with(" failed"))
                .cloned()
                .unwrap_or_default();
            let nums: Vec<u64> = last
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            match nums.as_slice() {
                [p, f] => {
                    t.passed += p;
                    t.failed += f;
                    if *f > 0 {
                        t.failures.push((*stage).into());
                    }
                }
                _ => t.stage(&format!("{stage} (runner did not finish)"), false),
            }
        }
    }

    if !t.failures.is_empty() {
        println!("failed: {}", t.failures.join(", "));
    }
    println!("{} passed, {} failed", t.passed, t.failed);
    if t.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
