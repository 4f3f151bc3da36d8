//! Entering network namespaces from a thread (setns affects only the
//! calling thread), and cgroups for child processes.

use std::{fs::File, os::fd::AsRawFd, path::Path};

use anyhow::Context as _;

pub fn netns_path(name: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(name)
}

/// Moves the calling thread into the named network namespace. Only call
/// this on a thread made for it: it never goes back.
pub fn enter(name: &str) -> anyhow::Result<()> {
    let path = netns_path(name);
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid fd of a network namespace file.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {name}"));
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside the named namespace and returns its result.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
}
