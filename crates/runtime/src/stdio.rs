//! Async access to a process's stdio from the node: pipes, and terminal masters.
//!
//! Output is read with [`Source`], which can also be drained without waiting: once a process has
//! exited, everything it wrote is already in the pipe or terminal buffer, so the relay reads
//! until the buffer is empty instead of waiting for EOF (a background process that inherited the
//! stream would otherwise hold the session open forever, kubernetes#44371).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// Pipe buffer size the node asks for: fewer wakeups per megabyte relayed.
const PIPE_SIZE: i32 = 1 << 20;

/// A close-on-exec pipe `(read, write)` with a large buffer.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // Best effort: the default 64 KiB also works, only slower.
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    Ok((r, w))
}

/// Registers a descriptor with the tokio reactor.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    register_with(fd, Interest::READABLE | Interest::WRITABLE)
}

/// Registers a descriptor with the tokio reactor for the given readiness only.
pub fn register_with(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open and names the same file description until the AsyncFd, which
    // owns it, is dropped; `as_raw_fd` always returns that descriptor.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

/// The master side of a process's terminal.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    pub fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        set_nonblocking(fd.as_fd())?;
        Ok(PtyMaster { fd: register(fd)? })
    }

    /// Reads output; 0 means the terminal is closed (Linux reports EIO once no slave is open).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read_eio_is_eof(fd.get_ref().as_fd(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "terminal closed"));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the terminal size; the foreground process group gets SIGWINCH.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        set_window_size(self.fd.get_ref().as_fd(), rows, cols)
    }
}

/// Sets a terminal's size (no-op for a zero dimension).
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which lives across the call.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?);
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn read_eio_is_eof(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    match nix::unistd::read(fd, buf) {
        Ok(n) => Ok(n),
        Err(Errno::EIO) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Where a process's output comes from.
pub enum Source {
    Pipe(pipe::Receiver),
    Pty(Arc<PtyMaster>),
}

impl Source {
    pub fn pipe(fd: OwnedFd) -> io::Result<Source> {
        Ok(Source::Pipe(pipe::Receiver::from_owned_fd(fd)?))
    }

    /// Reads output; 0 at end of stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Pipe(p) => loop {
                p.readable().await?;
                match p.try_read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
            Source::Pty(m) => m.read(buf).await,
        }
    }

    /// Reads what the process left behind once it has exited; 0 when there is nothing more.
    ///
    /// A pipe holds everything an exited process wrote, so an empty pipe is the end. A terminal
    /// hands output to the master asynchronously (the tty flip-buffer work), so it is read until
    /// EIO (the kernel flushes pending output before reporting it) or, when a descendant still
    /// holds the terminal open, until it has been quiet for a moment.
    pub async fn read_after_exit(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const TERMINAL_QUIET: std::time::Duration = std::time::Duration::from_millis(100);
        match self {
            // Ask the kernel, not tokio: tokio's `try_read` reports WouldBlock without a read
            // when its reactor has not yet seen the pipe become readable.
            Source::Pipe(p) => match nix::unistd::read(p.as_fd(), buf) {
                Ok(n) => Ok(n),
                Err(Errno::EAGAIN) => Ok(0),
                Err(e) => Err(e.into()),
            },
            Source::Pty(m) => tokio::time::timeout(TERMINAL_QUIET, m.read(buf)).await.unwrap_or(Ok(0)),
        }
    }
}

/// Where a process's input goes.
pub enum Sink {
    Pipe(pipe::Sender),
    Pty(Arc<PtyMaster>),
}

impl Sink {
    pub fn pipe(fd: OwnedFd) -> io::Result<Sink> {
        Ok(Sink::Pipe(pipe::Sender::from_owned_fd(fd)?))
    }

    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::Pipe(p) => tokio::io::AsyncWriteExt::write_all(p, buf).await,
            Sink::Pty(m) => m.write_all(buf).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_reads_what_is_buffered_then_would_block() -> Result<(), Box<dyn std::error::Error>> {
        let (r, w) = pipe()?;
        nix::unistd::write(&w, b"hello")?;
        let mut source = Source::pipe(r)?;
        let mut buf = [0u8; 16];
        assert_eq!(source.read(&mut buf).await?, 5);
        assert_eq!(source.read_after_exit(&mut buf).await?, 0);
        drop(w);
        assert_eq!(source.read(&mut buf).await?, 0);
        Ok(())
    }
}
