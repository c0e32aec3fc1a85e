//! Checks that a received file descriptor is a network namespace before ztunnel enters it.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

// From <linux/nsfs.h>: `#define NSIO 0xb7`, `#define NS_GET_NSTYPE _IO(NSIO, 0x3)` (Linux 4.11).
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// Ok if `fd` is a network namespace; otherwise what it is instead.
///
/// The filesystem is checked first so the ioctl only ever reaches nsfs files. Kernels older than
/// 4.11 do not know `NS_GET_NSTYPE` (ENOTTY); there any nsfs file is accepted.
pub(crate) fn check(fd: BorrowedFd<'_>) -> Result<(), String> {
    let fs = fstatfs(fd).map_err(|errno| format!("fstatfs failed: {errno}"))?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Err(format!(
            "it is on a filesystem of type {:#x}, not nsfs",
            fs.filesystem_type().0
        ));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which `fd` keeps open.
    match unsafe { ns_get_nstype(fd.as_raw_fd()) } {
        Ok(libc::CLONE_NEWNET) | Err(Errno::ENOTTY) => Ok(()),
        Ok(other) => Err(format!("it is a namespace of another type (CLONE flag {other:#x})")),
        Err(errno) => Err(format!("NS_GET_NSTYPE failed: {errno}")),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsFd;

    use super::check;

    #[test]
    fn accepts_a_netns_and_rejects_others() {
        let net = File::open("/proc/self/ns/net").expect("open own netns");
        assert_eq!(check(net.as_fd()), Ok(()));
        let uts = File::open("/proc/self/ns/uts").expect("open own uts ns");
        let error = check(uts.as_fd()).expect_err("uts is not a netns");
        assert!(error.contains("another type"), "{error}");
        let file = tempfile::tempfile().expect("temp file");
        let error = check(file.as_fd()).expect_err("a file is not a netns");
        assert!(error.contains("not nsfs"), "{error}");
    }
}
