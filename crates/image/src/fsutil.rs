//! Small filesystem helpers for the store's own files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::Rng;
use sha2::{Digest, Sha256};

/// A random name part for staging files and directories.
pub(crate) fn random_suffix() -> String {
    let bytes: [u8; 8] = rand::rng().random();
    hex::encode(bytes)
}

/// Make `path`'s directory entry durable.
pub(crate) fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Replace `path` with `contents` so that a crash leaves either the old or the new file:
/// temp file in the same directory, fsync, rename, fsync the directory.
pub(crate) fn atomic_write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let file_name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), random_suffix()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Remove a file, symlink or directory tree (std's `remove_dir_all` does not follow symlinks).
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Read a whole file, refusing more than `max` bytes.
pub(crate) fn read_limited(mut reader: impl Read, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.by_ref().take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A reader that hashes and optionally copies everything read through it.
pub(crate) struct TeeReader<R, W> {
    inner: R,
    copy: Option<W>,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read, W: Write> TeeReader<R, W> {
    pub(crate) fn new(inner: R, copy: Option<W>) -> Self {
        Self { inner, copy, hasher: Sha256::new(), bytes: 0 }
    }

    /// Read the rest of the stream (the tar reader stops at the end-of-archive marker, but
    /// the digest covers trailing padding too), refusing more than `max_trailing` bytes.
    pub(crate) fn drain(&mut self, max_trailing: u64) -> io::Result<()> {
        let drained = io::copy(&mut self.by_ref().take(max_trailing + 1), &mut io::sink())?;
        if drained > max_trailing {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {max_trailing} bytes of data after the end of the tar archive"),
            ));
        }
        Ok(())
    }

    /// Hex sha256 and length of everything read, and the copy target.
    pub(crate) fn finish(self) -> (String, u64, Option<W>) {
        (hex::encode(self.hasher.finalize()), self.bytes, self.copy)
    }
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(copy) = self.copy.as_mut() {
            copy.write_all(&buf[..n])?;
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what goes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }

    pub(crate) fn finish(self) -> (String, u64, W) {
        (hex::encode(self.hasher.finalize()), self.bytes, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
