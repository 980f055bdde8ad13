//! The main process's output log: one file of records `[stream u8][unix-nanos i64 LE][len u32 LE]
//! [bytes]`, appended by the output pump and read by `docker logs`.

use std::io;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

const HEADER: usize = 1 + 8 + 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub stderr: bool,
    pub timestamp: i64,
    pub data: Vec<u8>,
}

pub fn encode(stderr: bool, timestamp: i64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.push(u8::from(stderr) + 1);
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Appends records; each record is one `write` on an O_APPEND file, so readers never see two
/// records interleaved.
pub struct LogWriter {
    file: tokio::fs::File,
}

impl LogWriter {
    pub async fn open(path: &Path) -> io::Result<LogWriter> {
        let file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?;
        Ok(LogWriter { file })
    }

    pub async fn append(&mut self, stderr: bool, timestamp: i64, data: &[u8]) -> io::Result<()> {
        self.file.write_all(&encode(stderr, timestamp, data)).await
    }
}

/// Reads records from a position onwards; a record still being written is left for the next call.
pub struct LogReader {
    file: tokio::fs::File,
    pending: Vec<u8>,
}

impl LogReader {
    pub async fn open(path: &Path) -> io::Result<Option<LogReader>> {
        match tokio::fs::File::open(path).await {
            Ok(mut file) => {
                file.seek(io::SeekFrom::Start(0)).await?;
                Ok(Some(LogReader { file, pending: Vec::new() }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every complete record written since the last call.
    pub async fn read_available(&mut self) -> io::Result<Vec<LogRecord>> {
        self.file.read_to_end(&mut self.pending).await?;
        let mut records = Vec::new();
        let mut at = 0;
        while self.pending.len() - at >= HEADER {
            let h = &self.pending[at..at + HEADER];
            let len = u32::from_le_bytes([h[9], h[10], h[11], h[12]]) as usize;
            if self.pending.len() - at - HEADER < len {
                break;
            }
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&h[1..9]);
            records.push(LogRecord {
                stderr: h[0] == 2,
                timestamp: i64::from_le_bytes(ts),
                data: self.pending[at + HEADER..at + HEADER + len].to_vec(),
            });
            at += HEADER + len;
        }
        self.pending.drain(..at);
        Ok(records)
    }
}

/// Splits records into lines (keeping the newline) so `--tail N` can count lines, as Docker's
/// json-file driver stores one line per entry.
pub fn split_lines(records: Vec<LogRecord>) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for r in records {
        let mut start = 0;
        for (i, b) in r.data.iter().enumerate() {
            if *b == b'\n' {
                out.push(LogRecord { stderr: r.stderr, timestamp: r.timestamp, data: r.data[start..=i].to_vec() });
                start = i + 1;
            }
        }
        if start < r.data.len() {
            out.push(LogRecord { stderr: r.stderr, timestamp: r.timestamp, data: r.data[start..].to_vec() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_then_read_incrementally() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let mut w = LogWriter::open(&path).await?;
        w.append(false, 1, b"one\ntwo\n").await?;
        let mut r = LogReader::open(&path).await?.ok_or("missing")?;
        let got = r.read_available().await?;
        assert_eq!(got.len(), 1);
        assert_eq!(split_lines(got).len(), 2);
        // A half-written record is not returned until complete.
        let rec = encode(true, 2, b"err");
        tokio::fs::OpenOptions::new().append(true).open(&path).await?.write_all(&rec[..5]).await?;
        assert!(r.read_available().await?.is_empty());
        tokio::fs::OpenOptions::new().append(true).open(&path).await?.write_all(&rec[5..]).await?;
        assert_eq!(r.read_available().await?, vec![LogRecord { stderr: true, timestamp: 2, data: b"err".to_vec() }]);
        Ok(())
    }
}
