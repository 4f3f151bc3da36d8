//! Whether this kernel can enforce at all, checked once at start so that an
//! agent that cannot enforce says so (not ready, with the reason) instead of
//! failing every attach in a retry loop. [`assess`] decides; [`probe`] only
//! gathers the facts.

use std::path::Path;

/// TCX links (`BPF_LINK_CREATE` on tc ingress/egress) arrived in Linux 6.6.
/// Everything else the programs need is older and so covered by this one
/// check: cgroup bpf_links for the sock_addr and cgroup_skb/egress programs
/// (5.7), ring buffers (5.8), `bpf_skb_cgroup_id` in cgroup_skb programs.
pub const MIN_KERNEL: (u32, u32) = (6, 6);

/// What the decision needs to know about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// `uname -r`.
    pub release: String,
    /// The pin root's bpffs: `Ok` when mounted (or mountable), else why not.
    pub bpffs: Result<(), String>,
}

/// Why the kernel cannot enforce.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("kernel {release} has no TCX links (Linux >= {}.{} needed)", MIN_KERNEL.0, MIN_KERNEL.1)]
    OldKernel { release: String },
    #[error("kernel release {release:?} is not of the form MAJOR.MINOR")]
    UnknownRelease { release: String },
    #[error(
        "no bpffs for the pins: {reason} (mount it on the host, as the DaemonSet's init container does)"
    )]
    NoBpffs { reason: String },
}

/// `6.6.0-14-cloud-amd64` -> (6, 6).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let minor = minor.parse().ok()?;
    Some((major, minor))
}

/// Every reason the kernel cannot enforce; empty when it can.
pub fn assess(facts: &Facts) -> Vec<Unsupported> {
    let mut out = Vec::new();
    match parse_release(&facts.release) {
        Some(v) if v >= MIN_KERNEL => {}
        Some(_) => out.push(Unsupported::OldKernel {
            release: facts.release.clone(),
        }),
        None => out.push(Unsupported::UnknownRelease {
            release: facts.release.clone(),
        }),
    }
    if let Err(reason) = &facts.bpffs {
        out.push(Unsupported::NoBpffs {
            reason: reason.clone(),
        });
    }
    out
}

/// The facts of this machine for pins under `pin_root` (mounts bpffs where
/// it can, as loading would).
pub fn probe(pin_root: &Path) -> Facts {
    // SAFETY: uname writes into the zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    let release = if unsafe { libc::uname(&mut u) } == 0 {
        // SAFETY: uname NUL-terminates its fields.
        unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    let mount = super::bpffs::mount_point_for(pin_root);
    let bpffs = super::bpffs::ensure_mounted(mount)
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", mount.display()));
    Facts { release, bpffs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(release: &str) -> Facts {
        Facts {
            release: release.into(),
            bpffs: Ok(()),
        }
    }

    #[test]
    fn releases_parse_from_distribution_strings() {
        assert_eq!(parse_release("6.6.0-14-cloud-amd64"), Some((6, 6)));
        assert_eq!(parse_release("6.18.2"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-1057-azure"), Some((5, 15)));
        assert_eq!(parse_release("6.1rc3"), Some((6, 1)));
        assert_eq!(parse_release("7.0+"), Some((7, 0)));
        assert_eq!(parse_release("linux"), None);
        assert_eq!(parse_release(""), None);
    }

    #[test]
    fn tcx_needs_linux_6_6() {
        assert!(assess(&facts("6.6.0")).is_empty());
        assert!(assess(&facts("6.18.0-1-amd64")).is_empty());
        assert!(assess(&facts("7.1.0")).is_empty());
        for old in ["6.5.13", "6.1.0-28-amd64", "5.15.0-1057-azure", "4.19.0"] {
            assert_eq!(
                assess(&facts(old)),
                [Unsupported::OldKernel {
                    release: old.into()
                }],
                "{old}"
            );
        }
        let text = assess(&facts("6.1.0-28-amd64"))[0].to_string();
        assert!(
            text.contains("6.1.0-28-amd64") && text.contains(">= 6.6"),
            "{text}"
        );
    }

    #[test]
    fn every_reason_is_reported() {
        let f = Facts {
            release: "weird".into(),
            bpffs: Err("/sys/fs/bpf: Operation not permitted".into()),
        };
        let got = assess(&f);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(got[0], Unsupported::UnknownRelease { .. }));
        assert!(got[1].to_string().contains("Operation not permitted"));
    }
}
