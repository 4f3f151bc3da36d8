//! `cargo xtask setup`: everything the build and tests need, installed by
//! the project itself on a fresh machine, and nothing twice.
//!
//! * rust-src, for `-Z build-std=core` on the BPF target;
//! * bpf-linker 0.13, built against the LLVM shared library inside the
//!   rustup toolchain (linked from `$CARGO_HOME/palisade-llvm`, which lives
//!   as long as cargo's own installs do);
//! * Debian packages the tests use (iproute2, socat, iperf3, nftables, ...).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::exec::{exec, output};

#[derive(clap::Args, Default)]
pub(crate) struct Options {
    /// Only what building the agent needs (rust-src, bpf-linker), not the
    /// test tools: the image build (Dockerfile) uses this.
    #[arg(long)]
    pub toolchain_only: bool,
}

/// Debian packages: (package, a command it provides, why).
const PACKAGES: &[(&str, &str, &str)] = &[
    (
        "iproute2",
        "ip",
        "network namespaces, veths, routes for the harness",
    ),
    (
        "util-linux",
        "nsenter",
        "running the agent inside the test node's namespace (nsenter), under the DaemonSet's capabilities (setpriv), in a mount namespace without bpffs (unshare)",
    ),
    ("socat", "socat", "manual probes and the demo"),
    ("iperf3", "iperf3", "throughput benchmarks"),
    (
        "nftables",
        "nft",
        "the nftables baseline in benchmarks; Service translation (kube-proxy style) in scenarios",
    ),
    (
        "containernetworking-plugins",
        "/usr/lib/cni/ptp",
        "wiring pods through the CNI protocol as kindnet does (ptp, host-local), in scenarios and in front of palisade-cni in tests/tests/cni.rs",
    ),
    ("iputils-ping", "ping", "ICMP checks"),
];

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    if !o.toolchain_only {
        debian_packages()?;
    }
    println!("setup: done");
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src already installed");
        return Ok(());
    }
    println!("setup: installing rust-src");
    exec(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let bin = cargo_home().join("bin").join("bpf-linker");
    if let Ok(v) = output(Command::new(&bin).arg("--version"))
        && v.contains("0.13")
    {
        println!("setup: {} already installed", v.trim());
        return Ok(());
    }
    // The toolchain ships libLLVM as lib/libLLVM.so.<major>.<minor>-rust-...;
    // bpf-linker's build wants <prefix>/lib/libLLVM.so.
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["--print", "sysroot"]))?.trim());
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}/lib; is the toolchain complete?",
                sysroot.display()
            )
        })?;
    let name = lib.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .with_context(|| format!("cannot read the LLVM version from {name}"))?;
    let prefix = cargo_home().join("palisade-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib").join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    println!(
        "setup: building bpf-linker 0.13 against {} (LLVM {major}), about a minute",
        lib.display()
    );
    exec(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                "^0.13",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bin.exists() {
        bail!("bpf-linker not found at {} after installing", bin.display());
    }
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, cmd, _)| !have(cmd))
        .map(|(p, _, _)| *p)
        .collect();
    if missing.is_empty() {
        println!(
            "setup: Debian packages present ({})",
            PACKAGES.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    for (p, _, why) in PACKAGES.iter().filter(|(p, _, _)| missing.contains(p)) {
        println!("setup: installing {p} ({why})");
    }
    exec(Command::new("apt-get").arg("update").arg("-q"))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
