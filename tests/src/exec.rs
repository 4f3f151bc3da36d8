//! Running commands, with errors that name the command.

use std::process::{Command, Output};

use anyhow::{Context as _, bail};

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion; fails (naming it, with its stderr) on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `ip -batch -` with the given commands, one per line.
pub fn ip_batch(lines: &[String]) -> anyhow::Result<()> {
    ip_batch_in(None, lines)
}

/// Runs `ip [-n NETNS] -batch -` with the given commands, one per line.
pub fn ip_batch_in(netns: Option<&str>, lines: &[String]) -> anyhow::Result<()> {
    use std::io::Write as _;
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(n) = netns {
        cmd.args(["-n", n]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ip -batch (is iproute2 installed? `cargo xtask setup`)")?;
    {
        let stdin = child.stdin.as_mut().context("ip -batch stdin")?;
        for l in lines {
            writeln!(stdin, "{l}")?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}\ncommands:\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            lines.join("\n")
        );
    }
    Ok(())
}
