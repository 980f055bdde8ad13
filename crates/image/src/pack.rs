//! Turn a rootfs directory into a layer tarball (for `import_dir`), without following any
//! symbolic link inside it: directories are walked with `openat(O_NOFOLLOW)`, links are stored
//! as links. Device nodes and sockets are skipped (runc provides `/dev`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, CWD, Dir, FileType, Mode, OFlags, Stat};
use tar::{EntryType, Header};
use tracing::warn;

use crate::Limits;
use crate::error::{Error, IoContext};

struct Packer<W: Write> {
    builder: tar::Builder<W>,
    limits: Limits,
    entries: u64,
    bytes: u64,
    /// (dev, inode) of multiply linked files already stored → their archive path.
    links: HashMap<(u64, u64), Vec<u8>>,
}

/// Write `source` (a directory; the top-level path itself may be a symlink) as a tarball.
pub(crate) fn pack_dir<W: Write>(source: &Path, out: W, limits: Limits) -> Result<W, Error> {
    let shown = source.display().to_string();
    let root = rfs::openat(CWD, source, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .context(|| format!("opening rootfs directory {shown}"))?;
    let builder = tar::Builder::new(out);
    let mut packer = Packer { builder, limits, entries: 0, bytes: 0, links: HashMap::new() };
    packer.directory(&root, b"", &shown)?;
    packer.builder.into_inner().context(|| format!("writing tarball of {shown}"))
}

fn header_for(stat: &Stat, kind: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(u64::from(stat.st_uid));
    header.set_gid(u64::from(stat.st_gid));
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header.set_size(0);
    header
}

fn list_sorted(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// One PAX extended header record: `<len> <key>=<value>\n`, `len` counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len += 1;
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

fn read_xattrs(fd: BorrowedFd<'_>) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 64 * 1024];
    let Ok(len) = rfs::flistxattr(fd, &mut names[..]) else {
        return Vec::new();
    };
    let mut xattrs = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let mut value = vec![0u8; 64 * 1024];
        if let Ok(len) = rfs::fgetxattr(fd, name, &mut value[..]) {
            value.truncate(len);
            xattrs.push((name.to_owned(), value));
        }
    }
    xattrs
}

/// Fails with `UnexpectedEof` if the file is shorter than announced in the header.
struct Exact<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was being archived"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl<W: Write> Packer<W> {
    fn count(&mut self, path: &[u8], size: u64) -> Result<(), Error> {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(size);
        if path.len() > self.limits.max_path_bytes {
            return Err(Error::Limit(format!(
                "path {:?} is longer than {} bytes",
                String::from_utf8_lossy(path),
                self.limits.max_path_bytes
            )));
        }
        if self.entries > self.limits.max_entries {
            return Err(Error::Limit(format!("directory has more than {} entries", self.limits.max_entries)));
        }
        if self.bytes > self.limits.max_unpacked_bytes {
            return Err(Error::Limit(format!("directory holds more than {} bytes", self.limits.max_unpacked_bytes)));
        }
        Ok(())
    }

    fn append_xattrs(&mut self, fd: BorrowedFd<'_>, shown: &str) -> Result<(), Error> {
        let xattrs = read_xattrs(fd);
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (name, value) in &xattrs {
            data.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_path("PaxHeader").context(|| format!("archiving xattrs of {shown}"))?;
        header.set_cksum();
        self.builder.append(&header, data.as_slice()).context(|| format!("archiving xattrs of {shown}"))
    }

    fn directory(&mut self, dir: &OwnedFd, prefix: &[u8], shown_root: &str) -> Result<(), Error> {
        let names = list_sorted(dir).context(|| format!("listing {shown_root}/{}", String::from_utf8_lossy(prefix)))?;
        for name in names {
            let mut path = prefix.to_vec();
            path.extend_from_slice(&name);
            let shown = format!("{shown_root}/{}", String::from_utf8_lossy(&path));
            let stat = rfs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .context(|| format!("inspecting {shown}"))?;
            let archive_path = Path::new(OsStr::from_bytes(&path));
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    self.count(&path, 0)?;
                    let child = rfs::openat(
                        dir,
                        name.as_slice(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .context(|| format!("opening {shown}"))?;
                    self.append_xattrs(child.as_fd(), &shown)?;
                    let mut header = header_for(&stat, EntryType::Directory);
                    let mut dir_path = path.clone();
                    dir_path.push(b'/');
                    self.builder
                        .append_data(&mut header, Path::new(OsStr::from_bytes(&dir_path)), io::empty())
                        .context(|| format!("archiving {shown}"))?;
                    self.directory(&child, &dir_path, shown_root)?;
                }
                FileType::RegularFile => self.regular(dir, &name, &path, &stat, &shown)?,
                FileType::Symlink => {
                    self.count(&path, 0)?;
                    let target = rfs::readlinkat(dir, name.as_slice(), Vec::new())
                        .context(|| format!("reading link {shown}"))?;
                    let mut header = header_for(&stat, EntryType::Symlink);
                    self.builder
                        .append_link(&mut header, archive_path, Path::new(OsStr::from_bytes(target.as_bytes())))
                        .context(|| format!("archiving {shown}"))?;
                }
                FileType::Fifo => {
                    self.count(&path, 0)?;
                    let mut header = header_for(&stat, EntryType::Fifo);
                    self.builder
                        .append_data(&mut header, archive_path, io::empty())
                        .context(|| format!("archiving {shown}"))?;
                }
                other => warn!(path = %shown, kind = ?other, "skipping device node or socket"),
            }
        }
        Ok(())
    }

    fn regular(&mut self, dir: &OwnedFd, name: &[u8], path: &[u8], stat: &Stat, shown: &str) -> Result<(), Error> {
        let archive_path = Path::new(OsStr::from_bytes(path));
        let key = (stat.st_dev, stat.st_ino);
        if stat.st_nlink > 1 {
            if let Some(first) = self.links.get(&key).cloned() {
                self.count(path, 0)?;
                let mut header = header_for(stat, EntryType::Link);
                return self
                    .builder
                    .append_link(&mut header, archive_path, Path::new(OsStr::from_bytes(&first)))
                    .context(|| format!("archiving {shown}"));
            }
            self.links.insert(key, path.to_vec());
        }
        // NONBLOCK: if the file was swapped for a FIFO since the stat, do not hang on it.
        let fd = rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .context(|| format!("opening {shown}"))?;
        let opened = rfs::fstat(&fd).context(|| format!("inspecting {shown}"))?;
        if FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile || opened.st_ino != stat.st_ino {
            return Err(Error::io(
                format!("archiving {shown}"),
                io::Error::other("file was replaced while it was being archived"),
            ));
        }
        let size = u64::try_from(opened.st_size).unwrap_or(0);
        self.count(path, size)?;
        self.append_xattrs(fd.as_fd(), shown)?;
        let mut header = header_for(&opened, EntryType::Regular);
        header.set_size(size);
        let file = File::from(fd);
        self.builder
            .append_data(&mut header, archive_path, Exact { inner: file, remaining: size })
            .context(|| format!("archiving {shown}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let record = pax_record("a", b"b");
        assert_eq!(record, b"6 a=b\n");
        assert_eq!(pax_record("key", b"vv"), b"9 key=vv\n");
        // 99 bytes of body + 2 digits is 101, which needs 3 digits: 102.
        let long = pax_record("k", &[b'x'; 95]);
        assert_eq!(long.len().to_string().as_bytes(), &long[..3]);
    }
}
