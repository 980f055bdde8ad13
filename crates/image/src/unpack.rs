//! Safe extraction of one layer tarball into a rootfs directory.
//!
//! Nothing here resolves a path through a symbolic link: parents are opened one component at a
//! time with `O_NOFOLLOW | O_DIRECTORY` starting at the rootfs descriptor, and objects are
//! created with `*at` calls on those descriptors. The rules are listed in the crate docs.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use tracing::{debug, warn};

use crate::Limits;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const NAME_MAX: usize = 255;
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The entry tries to reach outside the rootfs or create something images may not hold.
    #[error("refusing unsafe archive entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    /// The entry is malformed or inconsistent with what is already extracted.
    #[error("invalid archive entry {entry:?}: {reason}")]
    Invalid { entry: String, reason: String },
    #[error("archive too large: {0}")]
    Limit(String),
    #[error("reading tar stream: {0}")]
    Read(#[source] io::Error),
    #[error("extracting {entry:?}: {source}")]
    Write {
        entry: String,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// The archive entry the error is about, if any.
    pub fn entry(&self) -> Option<&str> {
        match self {
            Self::Unsafe { entry, .. } | Self::Invalid { entry, .. } | Self::Write { entry, .. } => Some(entry),
            Self::Limit(_) | Self::Read(_) => None,
        }
    }

    pub(crate) fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Write { .. })
    }
}

fn unsafe_entry(entry: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe { entry: entry.to_owned(), reason: reason.into() }
}

fn invalid_entry(entry: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Invalid { entry: entry.to_owned(), reason: reason.into() }
}

fn write_error(entry: &str) -> impl Fn(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Write { entry: entry.to_owned(), source }
}

fn errno_error(entry: &str) -> impl Fn(Errno) -> UnpackError + '_ {
    move |errno| UnpackError::Write { entry: entry.to_owned(), source: errno.into() }
}

/// What one import may still extract, shared by all of its layers.
#[derive(Debug)]
pub(crate) struct Budget {
    limits: Limits,
    bytes: u64,
    entries: u64,
}

impl Budget {
    pub(crate) fn new(limits: Limits) -> Self {
        Self { limits, bytes: 0, entries: 0 }
    }

    fn charge(&mut self, size: u64) -> Result<(), UnpackError> {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(size);
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::Limit(format!("more than {} entries", self.limits.max_entries)));
        }
        if self.bytes > self.limits.max_unpacked_bytes {
            return Err(UnpackError::Limit(format!(
                "more than {} bytes once extracted",
                self.limits.max_unpacked_bytes
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerStats {
    /// Bytes of regular file content written.
    pub content_bytes: u64,
    pub entries: u64,
}

/// Split an archive path into its components: leading `/`, empty and `.` components are
/// dropped; `..` anywhere is refused.
pub(crate) fn normalize_path(raw: &[u8], max_len: usize) -> Result<Vec<Vec<u8>>, String> {
    if raw.len() > max_len {
        return Err(format!("path is longer than {max_len} bytes"));
    }
    if raw.contains(&0) {
        return Err("path contains a nul byte".to_owned());
    }
    let mut components = Vec::new();
    for component in raw.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("path contains a '..' component".to_owned()),
            c if c.len() > NAME_MAX => {
                return Err(format!("path component is longer than {NAME_MAX} bytes"));
            }
            c => components.push(c.to_vec()),
        }
    }
    Ok(components)
}

/// Would a relative symlink in a directory `parent_depth` levels below the root, pointing at
/// `target`, climb above the root? (Checked lexically; absolute targets stay inside the
/// container because the kernel resolves them against the container's root.)
pub(crate) fn symlink_climbs_out(parent_depth: usize, target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return false;
    }
    let mut depth = parent_depth;
    for component in target.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

fn join(components: &[Vec<u8>]) -> Vec<u8> {
    components.join(&b'/')
}

fn display(components: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&join(components)).into_owned()
}

/// Owner, permissions, times and xattrs of an entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn timestamps(&self) -> Timestamps {
        Timestamps { last_access: self.mtime, last_modification: self.mtime }
    }
}

#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: Timespec,
}

fn parse_pax_time(text: &str) -> Option<Timespec> {
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = seconds.parse().ok()?;
    let mut nanos_text: String = fraction.chars().take(9).collect();
    while nanos_text.len() < 9 {
        nanos_text.push('0');
    }
    Some(Timespec { tv_sec: seconds, tv_nsec: nanos_text.parse().ok()? })
}

/// An all-NUL or all-space numeric field means 0 (Go's archive/tar reads it so).
fn numeric(raw: &[u8], parsed: io::Result<u64>, what: &str, name: &str) -> Result<u64, UnpackError> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        return Ok(0);
    }
    parsed.map_err(|e| invalid_entry(name, format!("bad {what} field: {e}")))
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, UnpackError> {
    let header = entry.header();
    let old = header.as_old();
    let mode = numeric(&old.mode, header.mode().map(u64::from), "mode", name)? as u32 & 0o7777;
    let uid = numeric(&old.uid, header.uid(), "uid", name)?;
    let gid = numeric(&old.gid, header.gid(), "gid", name)?;
    let mtime = numeric(&old.mtime, header.mtime(), "mtime", name)?;
    let uid = u32::try_from(uid).map_err(|_| invalid_entry(name, "uid does not fit 32 bits"))?;
    let gid = u32::try_from(gid).map_err(|_| invalid_entry(name, "gid does not fit 32 bits"))?;
    let mut meta = Meta {
        mode,
        uid,
        gid,
        mtime: Timespec { tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX), tv_nsec: 0 },
        xattrs: Vec::new(),
    };
    if let Some(extensions) = entry.pax_extensions().map_err(|e| invalid_entry(name, format!("bad pax header: {e}")))? {
        for extension in extensions {
            let extension = extension.map_err(|e| invalid_entry(name, format!("bad pax record: {e}")))?;
            let Ok(key) = extension.key() else { continue };
            if key == "mtime" {
                if let Some(time) = extension.value().ok().and_then(parse_pax_time) {
                    meta.mtime = time;
                }
            } else if let Some(xattr) = key.strip_prefix(PAX_XATTR_PREFIX) {
                meta.xattrs.push((xattr.to_owned(), extension.value_bytes().to_vec()));
            }
        }
    }
    Ok(meta)
}

fn stat_nofollow(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<FileType>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

fn open_dir_for_listing(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rfs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?)
}

fn list_dir(dir: OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in Dir::new(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Remove `name` under `dir` and, if it is a directory, everything below it, without
/// following symlinks. Missing is fine.
pub(crate) fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match stat_nofollow(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let child = open_dir_for_listing(dir, name)?;
            let child_for_listing = child.try_clone()?;
            for grandchild in list_dir(child_for_listing)? {
                remove_tree_at(child.as_fd(), &grandchild)?;
            }
            Ok(rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        Some(_) => Ok(rfs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// Remove everything below `dir` that this layer did not write (an opaque directory hides
/// the lower layers' content but keeps its own).
fn hide_lower_layers(dir: &OwnedFd, prefix: &[u8], written: &HashSet<Vec<u8>>) -> io::Result<()> {
    for child in list_dir(dir.try_clone()?)? {
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&child);
        if !written.contains(&path) {
            remove_tree_at(dir.as_fd(), &child)?;
        } else if stat_nofollow(dir.as_fd(), &child)? == Some(FileType::Directory) {
            let child_dir = open_dir_for_listing(dir.as_fd(), &child)?;
            hide_lower_layers(&child_dir, &path, written)?;
        }
    }
    Ok(())
}

fn top<'a>(stack: &'a [(Vec<u8>, OwnedFd)], root: &'a OwnedFd) -> BorrowedFd<'a> {
    stack.last().map_or_else(|| root.as_fd(), |(_, fd)| fd.as_fd())
}

fn open_child_dir(parent: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rfs::openat(parent, name, OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
}

/// Explain why `name` under `parent` could not be opened as a directory.
fn not_a_directory(parent: BorrowedFd<'_>, components: &[Vec<u8>], entry: &str, errno: Errno) -> UnpackError {
    let Some(leaf) = components.last() else {
        return errno_error(entry)(errno);
    };
    let shown = display(components);
    match stat_nofollow(parent, leaf) {
        Ok(Some(FileType::Symlink)) => {
            unsafe_entry(entry, format!("{shown} is a symbolic link; refusing to write through it"))
        }
        Ok(Some(_)) => invalid_entry(entry, format!("{shown} is not a directory")),
        _ => errno_error(entry)(errno),
    }
}

struct Unpacker<'b> {
    root: OwnedFd,
    /// Open directories from the root down to the previous entry's parent.
    stack: Vec<(Vec<u8>, OwnedFd)>,
    /// Paths this layer created, for opaque whiteouts.
    written: HashSet<Vec<u8>>,
    /// Directory modes and times, applied once the layer is complete (creating children
    /// changes a directory's mtime, and a read-only mode would block them for non-root).
    dirs: HashMap<Vec<Vec<u8>>, DirMeta>,
    budget: &'b mut Budget,
    max_path: usize,
    set_owner: bool,
    stats: LayerStats,
}

/// Extract one layer tarball (uncompressed stream) into `rootfs`, applying whiteouts.
pub(crate) fn unpack_layer<R: Read>(reader: R, rootfs: &Path, budget: &mut Budget) -> Result<LayerStats, UnpackError> {
    let root = rfs::openat(CWD, rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| UnpackError::Write { entry: String::new(), source: e.into() })?;
    let max_path = budget.limits.max_path_bytes;
    let mut unpacker = Unpacker {
        root,
        stack: Vec::new(),
        written: HashSet::new(),
        dirs: HashMap::new(),
        budget,
        max_path,
        set_owner: rustix::process::geteuid().is_root(),
        stats: LayerStats::default(),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        unpacker.entry(entry.map_err(UnpackError::Read)?)?;
    }
    unpacker.finish()
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        self.budget.charge(entry.size())?;
        self.stats.entries += 1;
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            debug!(entry = %name, "skipping stray tar extension header");
            return Ok(());
        }
        let components = normalize_path(&raw_path, self.max_path).map_err(|r| unsafe_entry(&name, r))?;
        let meta = read_meta(&mut entry, &name)?;
        if let Some((leaf, parents)) = components.split_last()
            && leaf.starts_with(WHITEOUT_PREFIX)
        {
            return self.whiteout(parents, leaf, &name);
        }
        // Pre-POSIX tars mark directories with a trailing slash on a regular entry.
        let old_style_dir = kind.is_file() && raw_path.ends_with(b"/");
        if kind.is_dir() || old_style_dir {
            self.directory(&components, &meta, &name)
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            self.regular(&components, &meta, &mut entry, &name)
        } else if kind.is_symlink() {
            let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
            self.symlink(&components, &target, &meta, &name)
        } else if kind.is_hard_link() {
            let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
            self.hard_link(&components, &target, &name)
        } else if kind.is_fifo() {
            self.fifo(&components, &meta, &name)
        } else if kind.is_character_special() || kind.is_block_special() {
            Err(unsafe_entry(&name, "device nodes are not allowed in images"))
        } else {
            Err(invalid_entry(&name, format!("unsupported tar entry type {:?}", char::from(kind.as_byte()))))
        }
    }

    /// Open (creating when asked) the directories `dirs` below the root, reusing the
    /// descriptors of the previous entry's path. Returns false if one is missing.
    fn enter(&mut self, dirs: &[Vec<u8>], create: bool, entry: &str) -> Result<bool, UnpackError> {
        let common = self.stack.iter().zip(dirs).take_while(|((open, _), wanted)| open == *wanted).count();
        self.stack.truncate(common);
        for depth in common..dirs.len() {
            let name = &dirs[depth];
            let parent = top(&self.stack, &self.root);
            let opened = match open_child_dir(parent, name) {
                Err(Errno::NOENT) if create => {
                    // Parents the archive does not list get 0755 whatever the umask, as in Docker.
                    rfs::mkdirat(parent, name.as_slice(), Mode::from_raw_mode(0o755)).map_err(errno_error(entry))?;
                    rfs::chmodat(parent, name.as_slice(), Mode::from_raw_mode(0o755), AtFlags::empty())
                        .map_err(errno_error(entry))?;
                    self.written.insert(join(&dirs[..=depth]));
                    open_child_dir(parent, name)
                }
                Err(Errno::NOENT) => return Ok(false),
                other => other,
            };
            let fd = match opened {
                Ok(fd) => fd,
                Err(errno @ (Errno::LOOP | Errno::NOTDIR)) => {
                    return Err(not_a_directory(parent, &dirs[..=depth], entry, errno));
                }
                Err(errno) => return Err(errno_error(entry)(errno)),
            };
            self.stack.push((name.clone(), fd));
        }
        Ok(true)
    }

    /// Open `dirs` from the root without touching the cache; `None` if one is missing.
    fn open_path(&self, dirs: &[Vec<u8>], entry: &str) -> Result<Option<OwnedFd>, UnpackError> {
        let mut current = self.root.try_clone().map_err(write_error(entry))?;
        for (depth, name) in dirs.iter().enumerate() {
            current = match open_child_dir(current.as_fd(), name) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(errno @ (Errno::LOOP | Errno::NOTDIR)) => {
                    return Err(not_a_directory(current.as_fd(), &dirs[..=depth], entry, errno));
                }
                Err(errno) => return Err(errno_error(entry)(errno)),
            };
        }
        Ok(Some(current))
    }

    fn split<'c>(components: &'c [Vec<u8>], entry: &str) -> Result<(&'c Vec<u8>, &'c [Vec<u8>]), UnpackError> {
        components.split_last().ok_or_else(|| invalid_entry(entry, "only directories may name the archive root"))
    }

    fn chown_at(&self, dir: BorrowedFd<'_>, name: &[u8], meta: &Meta, entry: &str) -> Result<(), UnpackError> {
        if !self.set_owner {
            return Ok(());
        }
        rfs::chownat(dir, name, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno_error(entry))
    }

    fn whiteout(&mut self, parents: &[Vec<u8>], leaf: &[u8], entry: &str) -> Result<(), UnpackError> {
        if leaf == WHITEOUT_OPAQUE {
            if !self.enter(parents, false, entry)? {
                return Ok(());
            }
            let dir = top(&self.stack, &self.root);
            let listing = rfs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(errno_error(entry))?;
            return hide_lower_layers(&listing, &join(parents), &self.written).map_err(write_error(entry));
        }
        if leaf.starts_with(WHITEOUT_META_PREFIX) {
            debug!(entry, "skipping aufs whiteout metadata");
            return Ok(());
        }
        let hidden = &leaf[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(invalid_entry(entry, "whiteout does not name a file"));
        }
        if !self.enter(parents, false, entry)? {
            return Ok(());
        }
        remove_tree_at(top(&self.stack, &self.root), hidden).map_err(write_error(entry))
    }

    fn directory(&mut self, components: &[Vec<u8>], meta: &Meta, entry: &str) -> Result<(), UnpackError> {
        let dir_meta = DirMeta { mode: meta.mode, mtime: meta.mtime };
        let Some((leaf, parents)) = components.split_last() else {
            self.chown_at(self.root.as_fd(), b".", meta, entry)?;
            self.dirs.insert(Vec::new(), dir_meta);
            return Ok(());
        };
        self.enter(parents, true, entry)?;
        let parent = top(&self.stack, &self.root);
        match stat_nofollow(parent, leaf).map_err(write_error(entry))? {
            Some(FileType::Directory) => {}
            existing => {
                if existing.is_some() {
                    remove_tree_at(parent, leaf).map_err(write_error(entry))?;
                }
                rfs::mkdirat(parent, leaf.as_slice(), Mode::from_raw_mode(0o700)).map_err(errno_error(entry))?;
            }
        }
        self.chown_at(parent, leaf, meta, entry)?;
        if !meta.xattrs.is_empty() {
            let dir = open_dir_for_listing(parent, leaf).map_err(write_error(entry))?;
            set_xattrs(&dir, &meta.xattrs, entry);
        }
        self.dirs.insert(components.to_vec(), dir_meta);
        self.written.insert(join(components));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        components: &[Vec<u8>],
        meta: &Meta,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), UnpackError> {
        let (leaf, parents) = Self::split(components, name)?;
        self.enter(parents, true, name)?;
        let parent = top(&self.stack, &self.root);
        remove_tree_at(parent, leaf).map_err(write_error(name))?;
        let fd = rfs::openat(
            parent,
            leaf.as_slice(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(errno_error(name))?;
        let mut file = File::from(fd);
        let written = copy_content(entry, &mut file, name)?;
        if self.set_owner {
            rfs::fchown(&file, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
                .map_err(errno_error(name))?;
        }
        // After chown, which clears set-id bits.
        rfs::fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(errno_error(name))?;
        set_xattrs(&file, &meta.xattrs, name);
        rfs::futimens(&file, &meta.timestamps()).map_err(errno_error(name))?;
        self.stats.content_bytes += written;
        self.written.insert(join(components));
        Ok(())
    }

    fn symlink(&mut self, components: &[Vec<u8>], target: &[u8], meta: &Meta, name: &str) -> Result<(), UnpackError> {
        let (leaf, parents) = Self::split(components, name)?;
        if target.is_empty() {
            return Err(invalid_entry(name, "symbolic link has an empty target"));
        }
        if target.len() > self.max_path || target.contains(&0) {
            return Err(invalid_entry(name, "symbolic link target is too long"));
        }
        if symlink_climbs_out(parents.len(), target) {
            return Err(unsafe_entry(
                name,
                format!("symbolic link target {:?} climbs above the root", String::from_utf8_lossy(target)),
            ));
        }
        self.enter(parents, true, name)?;
        let parent = top(&self.stack, &self.root);
        remove_tree_at(parent, leaf).map_err(write_error(name))?;
        rfs::symlinkat(target, parent, leaf.as_slice()).map_err(errno_error(name))?;
        self.chown_at(parent, leaf, meta, name)?;
        rfs::utimensat(parent, leaf.as_slice(), &meta.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno_error(name))?;
        if !meta.xattrs.is_empty() {
            debug!(entry = name, "not restoring xattrs on a symbolic link");
        }
        self.written.insert(join(components));
        Ok(())
    }

    fn hard_link(&mut self, components: &[Vec<u8>], target: &[u8], name: &str) -> Result<(), UnpackError> {
        let (leaf, parents) = Self::split(components, name)?;
        let shown_target = String::from_utf8_lossy(target).into_owned();
        let target_components = normalize_path(target, self.max_path)
            .map_err(|r| unsafe_entry(name, format!("hard link target {shown_target:?}: {r}")))?;
        let Some((target_leaf, target_parents)) = target_components.split_last() else {
            return Err(unsafe_entry(name, "hard link to the archive root"));
        };
        if target_components == components {
            return Ok(());
        }
        let missing = || invalid_entry(name, format!("hard link target {shown_target:?} does not exist in the image"));
        let target_dir = self.open_path(target_parents, name)?.ok_or_else(missing)?;
        match stat_nofollow(target_dir.as_fd(), target_leaf).map_err(write_error(name))? {
            None => return Err(missing()),
            Some(FileType::Symlink) => {
                return Err(unsafe_entry(name, format!("hard link target {shown_target:?} is a symbolic link")));
            }
            Some(FileType::Directory) => {
                return Err(unsafe_entry(name, format!("hard link target {shown_target:?} is a directory")));
            }
            Some(_) => {}
        }
        self.enter(parents, true, name)?;
        let parent = top(&self.stack, &self.root);
        remove_tree_at(parent, leaf).map_err(write_error(name))?;
        rfs::linkat(&target_dir, target_leaf.as_slice(), parent, leaf.as_slice(), AtFlags::empty())
            .map_err(errno_error(name))?;
        self.written.insert(join(components));
        Ok(())
    }

    fn fifo(&mut self, components: &[Vec<u8>], meta: &Meta, name: &str) -> Result<(), UnpackError> {
        let (leaf, parents) = Self::split(components, name)?;
        self.enter(parents, true, name)?;
        let parent = top(&self.stack, &self.root);
        remove_tree_at(parent, leaf).map_err(write_error(name))?;
        rfs::mknodat(parent, leaf.as_slice(), FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .map_err(errno_error(name))?;
        self.chown_at(parent, leaf, meta, name)?;
        // The FIFO was just created by us in a private directory: chmodat cannot be redirected.
        rfs::chmodat(parent, leaf.as_slice(), Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(errno_error(name))?;
        rfs::utimensat(parent, leaf.as_slice(), &meta.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno_error(name))?;
        self.written.insert(join(components));
        Ok(())
    }

    /// Apply the deferred directory modes and times.
    fn finish(self) -> Result<LayerStats, UnpackError> {
        for (components, meta) in &self.dirs {
            let name = display(components);
            let times = Timestamps { last_access: meta.mtime, last_modification: meta.mtime };
            let mode = Mode::from_raw_mode(meta.mode);
            let Some((leaf, parents)) = components.split_last() else {
                rfs::chmodat(&self.root, ".", mode, AtFlags::empty()).map_err(errno_error(&name))?;
                rfs::utimensat(&self.root, ".", &times, AtFlags::empty()).map_err(errno_error(&name))?;
                continue;
            };
            let Some(parent) = self.open_path(parents, &name)? else {
                continue;
            };
            // A later entry may have replaced the directory; then its metadata is stale.
            if stat_nofollow(parent.as_fd(), leaf).map_err(write_error(&name))? != Some(FileType::Directory) {
                continue;
            }
            rfs::chmodat(&parent, leaf.as_slice(), mode, AtFlags::empty()).map_err(errno_error(&name))?;
            rfs::utimensat(&parent, leaf.as_slice(), &times, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_error(&name))?;
        }
        Ok(self.stats)
    }
}

/// Copy an entry's content, telling read errors (bad archive) from write errors (store).
fn copy_content<R: Read>(entry: &mut tar::Entry<'_, R>, file: &mut File, name: &str) -> Result<u64, UnpackError> {
    let mut buffer = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Read(e)),
        };
        file.write_all(&buffer[..n]).map_err(write_error(name))?;
        total += n as u64;
    }
    Ok(total)
}

/// Restore extended attributes; a failure loses the attribute, not the image, so it is logged.
fn set_xattrs<Fd: AsFd>(fd: &Fd, xattrs: &[(String, Vec<u8>)], entry: &str) {
    for (name, value) in xattrs {
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            warn!(entry, xattr = %name, "dropping overlayfs xattr from image");
            continue;
        }
        if let Err(errno) = rfs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
            warn!(entry, xattr = %name, %errno, "could not restore xattr");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        let ok = |p: &str| normalize_path(p.as_bytes(), 4096).map(|c| display(&c));
        assert_eq!(ok("./a/b/").ok().as_deref(), Some("a/b"));
        assert_eq!(ok("/etc//passwd").ok().as_deref(), Some("etc/passwd"));
        assert_eq!(ok("./").ok().as_deref(), Some(""));
        assert!(ok("a/../b").is_err());
        assert!(ok("..").is_err());
        assert!(ok(&"x".repeat(256)).is_err());
        assert!(normalize_path(b"a\0b", 4096).is_err());
        assert!(normalize_path(&[b'a'; 5000], 4096).is_err());
    }

    #[test]
    fn detects_climbing_symlinks() {
        assert!(!symlink_climbs_out(0, b"/etc/passwd"));
        assert!(!symlink_climbs_out(0, b"bin/busybox"));
        assert!(!symlink_climbs_out(2, b"../../bin/sh"));
        assert!(symlink_climbs_out(2, b"../../../bin/sh"));
        assert!(symlink_climbs_out(0, b".."));
        assert!(!symlink_climbs_out(1, b"a/../.."));
        assert!(symlink_climbs_out(0, b"a/../.."));
        assert!(symlink_climbs_out(3, b"../../../../../../../etc"));
        assert!(!symlink_climbs_out(0, b"./x/./y"));
    }

    #[test]
    fn parses_pax_times() {
        let t = parse_pax_time("1700000000.5").unwrap_or(Timespec { tv_sec: 0, tv_nsec: 0 });
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        assert!(parse_pax_time("x").is_none());
    }
}
