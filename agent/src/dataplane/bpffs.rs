//! Making sure the pin root is on a BPF filesystem.

use std::{ffi::CString, io, path::Path};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at `mount_point` (normally /sys/fs/bpf) unless it already is one.
/// Returns whether it mounted.
pub fn ensure_mounted(mount_point: &Path) -> io::Result<bool> {
    std::fs::create_dir_all(mount_point)?;
    if is_bpffs(mount_point)? {
        return Ok(false);
    }
    let target =
        CString::new(mount_point.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let fstype = CString::new("bpf").map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// The bpffs mount point that holds `pin_root` (its first ancestor that is one,
/// or /sys/fs/bpf).
pub fn mount_point_for(pin_root: &Path) -> &Path {
    pin_root
        .ancestors()
        .find(|a| is_bpffs(a).unwrap_or(false))
        .unwrap_or(Path::new("/sys/fs/bpf"))
}
