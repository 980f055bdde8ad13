//! Detect a compressed stream by its magic bytes and decompress gzip; the other formats
//! Docker accepts get a clear error instead of a confusing tar parse failure.

use std::io::{self, Cursor, Read};

use flate2::read::MultiGzDecoder;

use crate::error::Error;

const GZIP: &[u8] = &[0x1f, 0x8b];
const BZIP2: &[u8] = b"BZh";
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Read up to 6 bytes without losing them.
fn sniff<R: Read>(mut reader: R) -> io::Result<(Vec<u8>, R)> {
    let mut prefix = vec![0u8; 6];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    prefix.truncate(filled);
    Ok((prefix, reader))
}

/// Wrap `reader` so it yields the uncompressed tar stream. `what` names the stream in errors.
pub(crate) fn decompressed<'a, R: Read + 'a>(reader: R, what: &str) -> Result<Box<dyn Read + 'a>, Error> {
    let (prefix, reader) = sniff(reader).map_err(|e| Error::io(format!("reading {what}"), e))?;
    let unsupported = |format: &str| {
        Err(Error::InvalidArchive(format!(
            "{what} is {format}-compressed; only uncompressed and gzip tarballs are supported"
        )))
    };
    if prefix.starts_with(BZIP2) {
        return unsupported("bzip2");
    }
    if prefix.starts_with(XZ) {
        return unsupported("xz");
    }
    if prefix.starts_with(ZSTD) {
        return unsupported("zstd");
    }
    let whole = Cursor::new(prefix.clone()).chain(reader);
    if prefix.starts_with(GZIP) { Ok(Box::new(MultiGzDecoder::new(whole))) } else { Ok(Box::new(whole)) }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{Compression, write::GzEncoder};

    use super::*;

    fn read_all(input: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        decompressed(input, "test")?.read_to_end(&mut out).map_err(|e| Error::io("read", e))?;
        Ok(out)
    }

    #[test]
    fn passes_plain_and_gunzips() {
        assert_eq!(read_all(b"plain data").ok(), Some(b"plain data".to_vec()));
        assert_eq!(read_all(b"").ok(), Some(Vec::new()));
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(b"hello").ok();
        let gz = encoder.finish().unwrap_or_default();
        assert_eq!(read_all(&gz).ok(), Some(b"hello".to_vec()));
    }

    #[test]
    fn names_unsupported_formats() {
        let err = read_all(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1]).err();
        assert!(err.is_some_and(|e| e.to_string().contains("xz-compressed")));
    }
}
