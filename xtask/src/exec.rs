//! Running commands with errors that name them.

use std::{
    path::PathBuf,
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, bail};

pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command with inherited output; fails naming it on a non-zero exit.
pub(crate) fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

pub(crate) fn status(cmd: &mut Command) -> anyhow::Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("running `{}`", describe(cmd)))
}

/// Runs a command and returns its stdout; fails naming it on a non-zero exit.
pub(crate) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds the agent and the harness binaries; returns the directory that
/// holds them (palisade, palisade-scenario, palisade-bench).
pub(crate) fn build_binaries(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "palisade-agent",
        "--package",
        "palisade-tests",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    exec(&mut cmd)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}
