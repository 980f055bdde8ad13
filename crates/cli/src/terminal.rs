//! The local terminal: raw mode that is always restored, and its size.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Puts a terminal in raw mode until dropped (normal return, error, or panic unwinding).
pub struct RawMode {
    fd: std::os::fd::OwnedFd,
    original: Termios,
}

impl RawMode {
    /// Raw mode on `fd`: bytes pass through unchanged (Ctrl-C, Ctrl-D and friends go to the remote
    /// process), no local echo, no output processing (the remote terminal does that).
    pub fn enable(fd: BorrowedFd<'_>) -> std::io::Result<RawMode> {
        let original = termios::tcgetattr(fd)?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { fd: fd.try_clone_to_owned()?, original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // TCSADRAIN: the last output reaches the screen before the modes change back.
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSADRAIN, &self.original);
    }
}

/// Whether stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// The size of the terminal on `fd` as (rows, cols), if it is one with a size.
pub fn size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}
