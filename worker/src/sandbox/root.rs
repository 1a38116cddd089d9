//! The sandbox's filesystem: a fresh, read-only tmpfs root holding only what a tool needs, switched to
//! with `pivot_root`; the host's tree is then detached entirely. What it holds:
//!
//! - the system directories ([`SYSTEM_DIRS`]: programs and the libraries they load), read-only, and the
//!   host's top-level symlinks to them (`/bin -> usr/bin`) as symlinks;
//! - `/etc` with only [`ETC_ENTRIES`] (library cache, alternatives, time zone, name resolution, CA
//!   certificates, the distribution's Python config), read-only, plus a `passwd` and `group` naming only
//!   the sandbox user;
//! - `/dev` with `null`, `zero`, `full`, `random`, `urandom`, the `fd`/`stdin`/`stdout`/`stderr` links, and
//!   a private `/dev/shm`;
//! - a fresh tmpfs on `/tmp` (the work dir), a `/proc` of the sandbox's PID namespace;
//! - each `--ro-bind` / `--rw-bind` path (directory or file) at its own path.
//!
//! Nothing else of the host exists inside: not its `/etc`, homes, `/opt`, `/var`, `/run`, the project
//! checkout or the manifests directory. A symlink a tool makes resolves inside this root.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::mounts::{self, Failure, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use super::{ROOT_TMPFS_BYTES, Ids, Options};

/// Host directories bound read-only (those that exist; symlinks among them are recreated as symlinks).
pub const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// Entries of the host's `/etc` bound read-only when they exist (symlinks followed): none holds a secret.
pub const ETC_ENTRIES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "resolv.conf",
    "hosts",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "services",
    "protocols",
    "mime.types",
    "ssl/certs",
    "ssl/openssl.cnf",
    "pki/tls/certs",
    "pki/ca-trust/extracted",
    "python3",
];
/// Device nodes bound from the host's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Where the new root is assembled before `pivot_root` (covered in the sandbox's own mount namespace).
const STAGING: &str = "/tmp";
/// Largest `/dev/shm`.
const SHM_BYTES: u64 = 64 * 1024 * 1024;

enum Source {
    /// A detached copy of a host tree (directory or file).
    Tree { fd: OwnedFd, dir: bool },
    Symlink(PathBuf),
}

/// The host paths the sandbox shows, taken (as detached mount trees) before anything changes.
pub struct Taken {
    entries: Vec<(PathBuf, Source)>,
}

/// Takes every tree the new root shows. Runs as the namespace's root, before the user switch.
pub fn take(options: &Options) -> Result<Taken, Failure> {
    let mut entries = Vec::new();
    let read_only = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    for dir in SYSTEM_DIRS.iter().map(Path::new) {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(dir).map_err(|e| Failure { refused: false, message: format!("{}: {e}", dir.display()) })?;
                entries.push((dir.to_path_buf(), Source::Symlink(target)));
            }
            Ok(m) if m.is_dir() => entries.push((dir.to_path_buf(), tree(dir, read_only)?)),
            _ => {}
        }
    }
    let mut etc: Vec<PathBuf> = ETC_ENTRIES.iter().map(|e| Path::new("/etc").join(e)).collect();
    // The distribution's per-version Python config (/etc/python3.11, where sitecustomize lives).
    for entry in std::fs::read_dir("/etc").into_iter().flatten().flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with("python3.")) {
            etc.push(entry.path());
        }
    }
    for path in etc.iter().filter(|p| p.exists()) {
        entries.push((path.clone(), tree(path, read_only)?));
    }
    for device in DEVICES.iter().map(|d| Path::new("/dev").join(d)).filter(|d| d.exists()) {
        entries.push((device.clone(), tree(&device, MOUNT_ATTR_NOSUID)?));
    }
    for path in &options.ro_bind {
        entries.push((path.clone(), tree(path, read_only)?));
    }
    for path in &options.rw_bind {
        entries.push((path.clone(), tree(path, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)?));
    }
    Ok(Taken { entries })
}

fn tree(path: &Path, attributes: u64) -> Result<Source, Failure> {
    Ok(Source::Tree { fd: mounts::clone_tree(path, attributes)?, dir: path.is_dir() })
}

fn failed(what: String) -> impl FnOnce(std::io::Error) -> Failure {
    move |e| Failure { refused: false, message: format!("{what}: {e}") }
}

/// Builds the new root and switches to it. Runs as the sandbox user, with the namespace's capabilities.
pub fn enter(taken: Taken, options: &Options, ids: Ids) -> Result<(), Failure> {
    let root = Path::new(STAGING);
    mounts::tmpfs(root, ROOT_TMPFS_BYTES, 0o755, ids.uid, ids.gid)?;
    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    // Parents before children: /tmp before a bound directory inside it.
    let mut entries = taken.entries;
    entries.sort_by_key(|(path, _)| path.components().count());
    let (system, binds): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|(path, _)| !options.ro_bind.contains(path) && !options.rw_bind.contains(path));
    for (path, source) in system {
        place(&inside(&path), source)?;
    }
    let etc = inside(Path::new("/etc"));
    std::fs::create_dir_all(&etc).map_err(failed("creating /etc".into()))?;
    write_users(&etc, ids)?;
    let dev = inside(Path::new("/dev"));
    std::fs::create_dir_all(dev.join("shm")).map_err(failed("creating /dev".into()))?;
    for (name, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(failed(format!("creating /dev/{name}")))?;
    }
    mounts::tmpfs(&dev.join("shm"), options.tmpfs_bytes.min(SHM_BYTES), 0o1777, ids.uid, ids.gid)?;
    let tmp = inside(Path::new("/tmp"));
    std::fs::create_dir_all(&tmp).map_err(failed("creating /tmp".into()))?;
    mounts::tmpfs(&tmp, options.tmpfs_bytes, 0o700, ids.uid, ids.gid)?;
    let proc = inside(Path::new("/proc"));
    std::fs::create_dir_all(&proc).map_err(failed("creating /proc".into()))?;
    // Mounted while the host's /proc is still in view (the kernel requires one fully visible).
    if !mounts::mount_proc(&proc) {
        eprintln!("toolwarden-worker sandbox: cannot mount a private /proc here; the sandbox has an empty /proc");
    }
    for (path, source) in binds {
        place(&inside(&path), source)?;
    }
    mounts::set_attr(root, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, false)?;
    pivot(root)
}

/// Puts a taken tree (or a symlink) at `at`, creating its mount point.
fn place(at: &Path, source: Source) -> Result<(), Failure> {
    let parent = at.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(failed(format!("creating {}", parent.display())))?;
    match source {
        Source::Symlink(target) => std::os::unix::fs::symlink(&target, at).map_err(failed(format!("linking {}", at.display()))),
        Source::Tree { fd, dir } => {
            if dir {
                std::fs::create_dir_all(at).map_err(failed(format!("creating {}", at.display())))?;
            } else if !at.exists() {
                std::fs::File::create(at).map_err(failed(format!("creating {}", at.display())))?;
            }
            mounts::attach(&fd, at)
        }
    }
}

/// `/etc/passwd` and `/etc/group` naming the sandbox user (and `nobody`, the owner of unmapped files).
fn write_users(etc: &Path, ids: Ids) -> Result<(), Failure> {
    let mut passwd = format!("tool:x:{}:{}:toolwarden tool:/tmp:/bin/sh\n", ids.uid, ids.gid);
    let mut group = format!("tool:x:{}:\n", ids.gid);
    if ids.uid != super::NOBODY {
        passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
        group.push_str("nogroup:x:65534:\n");
    }
    std::fs::write(etc.join("passwd"), passwd).map_err(failed("writing /etc/passwd".into()))?;
    std::fs::write(etc.join("group"), group).map_err(failed("writing /etc/group".into()))
}

/// Makes `root` the root of this mount namespace and detaches the host's tree under it.
fn pivot(root: &Path) -> Result<(), Failure> {
    let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: chdir/pivot_root/umount2 with valid C strings. pivot_root(".", ".") stacks the old root
    // under the new one, where it is then detached.
    unsafe {
        if libc::chdir(c.as_ptr()) != 0 || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            return Err(Failure { refused: false, message: format!("pivot_root: {}", std::io::Error::last_os_error()) });
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(Failure { refused: false, message: format!("detaching the host's tree: {}", std::io::Error::last_os_error()) });
        }
        libc::chdir(c"/".as_ptr());
    }
    Ok(())
}
