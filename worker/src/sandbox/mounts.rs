//! Mount primitives for the sandbox's filesystem (built in `root.rs` inside its new user and mount
//! namespaces): detached copies of host trees, tmpfs, attaching, `/proc`. Also the loopback interface.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

// Kernel ABI (linux/mount.h, linux/fcntl.h); open_tree/move_mount need 5.2, mount_setattr 5.12.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const AT_EMPTY_PATH: libc::c_uint = libc::AT_EMPTY_PATH as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A failed step; `refused` marks the kernel refusing namespace privileges (exit code 3).
pub struct Failure {
    pub refused: bool,
    pub message: String,
}

fn os_error(what: String) -> Failure {
    let e = std::io::Error::last_os_error();
    Failure { refused: false, message: format!("{what}: {e}") }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// Makes every mount private so nothing done here reaches the host. The first privileged step: a
/// refusal here means the kernel (or AppArmor) gave the new user namespace no rights.
pub fn make_private() -> Result<(), Failure> {
    let root = c"/";
    // SAFETY: plain mount(2) call with valid C strings.
    let rc = unsafe { libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Failure { refused: e.raw_os_error() == Some(libc::EPERM), message: format!("making mounts private: {e}") });
    }
    Ok(())
}

/// A detached copy of the mount tree at `path` (a directory or a file; a final symlink is followed),
/// taken before anything covers it, with mount `attributes` (`MOUNT_ATTR_*`) set on all of it.
pub fn clone_tree(path: &Path, attributes: u64) -> Result<OwnedFd, Failure> {
    let c = c_path(path);
    // SAFETY: open_tree(2) with a valid path; the returned fd is owned below.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
    };
    if fd < 0 {
        return Err(os_error(format!("cannot bind {}", path.display())));
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    set_attr_fd(&fd, attributes, 0).map_err(|f| Failure { message: format!("bind {}: {}", path.display(), f.message), ..f })?;
    Ok(fd)
}

fn set_attr_fd(fd: &OwnedFd, set: u64, clear: u64) -> Result<(), Failure> {
    use std::os::fd::AsRawFd;
    let attr = MountAttr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
    // SAFETY: mount_setattr(2) reads `attr` (of the size we pass) and the empty path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 { Err(os_error("mount_setattr".into())) } else { Ok(()) }
}

/// Sets mount attributes on the mount at `path` (and everything below it when `recursive`).
pub fn set_attr(path: &Path, set: u64, recursive: bool) -> Result<(), Failure> {
    let c = c_path(path);
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            if recursive { AT_RECURSIVE } else { 0 },
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 { Err(os_error(format!("setting the mount attributes of {}", path.display()))) } else { Ok(()) }
}

/// Mounts a tmpfs owned by the sandbox user.
pub fn tmpfs(path: &Path, size: u64, mode: u32, uid: u32, gid: u32) -> Result<(), Failure> {
    let target = c_path(path);
    let data = CString::new(format!("size={size},mode={mode:o},uid={uid},gid={gid}")).unwrap_or_default();
    // SAFETY: mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, data.as_ptr().cast())
    };
    if rc != 0 { Err(os_error(format!("mounting a tmpfs on {}", path.display()))) } else { Ok(()) }
}

/// Attaches a tree from [`clone_tree`] at `path` (an existing mount point).
pub fn attach(fd: &OwnedFd, path: &Path) -> Result<(), Failure> {
    use std::os::fd::AsRawFd;
    let c = c_path(path);
    // SAFETY: move_mount(2) with a descriptor we own and a valid path.
    let rc = unsafe {
        libc::syscall(libc::SYS_move_mount, fd.as_raw_fd(), c"".as_ptr(), libc::AT_FDCWD, c.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
    };
    if rc != 0 { Err(os_error(format!("binding {}", path.display()))) } else { Ok(()) }
}

/// A `/proc` for the new PID namespace (only its own processes) at `path`. Returns false when the kernel
/// refuses (inside some containers).
pub fn mount_proc(path: &Path) -> bool {
    let target = c_path(path);
    // SAFETY: mount(2) with valid C strings.
    unsafe {
        libc::mount(
            c"proc".as_ptr(),
            target.as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) == 0
    }
}

/// Brings up `lo` in the new network namespace (the only interface it has).
pub fn loopback_up() -> Result<(), Failure> {
    // SAFETY: socket/ioctl/close on a socket we own, with an ifreq we initialise.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(os_error("socket for lo".into()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req);
        }
        let result = if rc != 0 { Err(os_error("bringing up lo".into())) } else { Ok(()) };
        libc::close(sock);
        result
    }
}

/// Canonical absolute form of a path given on the command line.
pub fn absolute(dir: &str) -> Result<PathBuf, String> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(format!("`{dir}` must be an absolute path"));
    }
    std::fs::canonicalize(path).map_err(|e| format!("{dir}: {e}"))
}
