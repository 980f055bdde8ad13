//! Exec sessions: what was asked (`ExecSpec`), their recorded state (`ExecSession`), and the live
//! streams of one that runs (`RunningExec`), shared by the Docker API and the Kubernetes
//! streaming server.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};

use hatch_runtime::stdio::{PtyMaster, Sink, Source};

/// An exec request, in Docker's terms (Kubernetes options map onto it).
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub privileged: bool,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub detach_keys: String,
    /// Initial terminal size (rows, cols).
    pub console_size: Option<(u16, u16)>,
}

#[derive(Debug, Clone, Default)]
pub struct ExecState {
    pub running: bool,
    pub started: bool,
    pub exit_code: Option<i32>,
    /// Host pid of the process.
    pub pid: i32,
    /// When the record was created, or when its process ended.
    pub touched: Option<std::time::Instant>,
}

impl ExecState {
    /// Records the end of the process (or its failure to start).
    pub fn finish(&mut self, code: i32) {
        self.running = false;
        self.exit_code = Some(code);
        self.touched = Some(std::time::Instant::now());
    }
}

/// An exec instance, from create until its container is removed.
pub struct ExecSession {
    pub id: String,
    pub container_id: String,
    pub spec: ExecSpec,
    state: Mutex<ExecState>,
    /// The terminal, for resizes while it runs.
    pty: Mutex<Option<Arc<PtyMaster>>>,
    /// A size requested before the terminal existed (Docker clients resize right after start).
    pending_size: Mutex<Option<(u16, u16)>>,
}

impl ExecSession {
    pub fn new(id: String, container_id: String, spec: ExecSpec) -> Arc<ExecSession> {
        Arc::new(ExecSession {
            id,
            container_id,
            spec,
            state: Mutex::new(ExecState { touched: Some(std::time::Instant::now()), ..ExecState::default() }),
            pty: Mutex::new(None),
            pending_size: Mutex::new(None),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, ExecState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_pty(&self, pty: Option<Arc<PtyMaster>>) {
        // The terminal's lock first, in both methods: a size requested while the terminal
        // appears is then either seen here or applied by `resize`, never lost.
        let mut slot = self.pty.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(p), Some((rows, cols))) = (&pty, *self.pending_size.lock().unwrap_or_else(|p| p.into_inner())) {
            let _ = p.resize(rows, cols);
        }
        *slot = pty;
    }

    /// The last size asked for through [`ExecSession::resize`], if any.
    pub fn requested_size(&self) -> Option<(u16, u16)> {
        *self.pending_size.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resizes the terminal now, or when it appears.
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let slot = self.pty.lock().unwrap_or_else(|p| p.into_inner());
        *self.pending_size.lock().unwrap_or_else(|p| p.into_inner()) = Some((rows, cols));
        match &*slot {
            Some(p) => p.resize(rows, cols),
            None => Ok(()),
        }
    }
}

/// Messages from a front end to the task that owns the exec's init connection.
#[derive(Debug)]
pub enum ExecControl {
    /// The client vanished: hang up the process group.
    Hangup,
}

/// The live streams of a started exec.
pub struct RunningExec {
    pub session: Arc<ExecSession>,
    pub stdin: Option<Sink>,
    pub output: OutputReader,
    pub control: mpsc::Sender<ExecControl>,
}

impl RunningExec {
    /// Tells init the client is gone; the process group is hung up, and its exit still recorded.
    pub fn hang_up(&self) {
        let _ = self.control.try_send(ExecControl::Hangup);
    }

    pub fn exit(&self) -> watch::Receiver<Option<i32>> {
        self.output.exit.clone()
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Reads a process's output until it is complete: both streams at EOF and the exit status known,
/// or — once the process has exited — until what it wrote has been read (descendants that kept
/// the streams open do not hold the session).
pub struct OutputReader {
    stdout: Option<Source>,
    stderr: Option<Source>,
    exit: watch::Receiver<Option<i32>>,
    exited: bool,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
    /// The buffer the last read filled, to grow before the next.
    filled: Option<Stream>,
}

/// Read buffers start small (an interactive session reads a few bytes at a time, and a thousand
/// of them should not hold a quarter-megabyte each) and double, up to the largest, whenever a read
/// fills them (bulk output wants few, large reads).
const FIRST_READ: usize = 16 * 1024;
const LARGEST_READ: usize = 256 * 1024;

impl OutputReader {
    pub fn new(stdout: Option<Source>, stderr: Option<Source>, exit: watch::Receiver<Option<i32>>) -> OutputReader {
        let err_buf = if stderr.is_some() { vec![0; FIRST_READ] } else { Vec::new() };
        OutputReader { stdout, stderr, exit, exited: false, out_buf: vec![0; FIRST_READ], err_buf, filled: None }
    }

    fn grow_filled(&mut self) {
        let buf = match self.filled.take() {
            Some(Stream::Stdout) => &mut self.out_buf,
            Some(Stream::Stderr) => &mut self.err_buf,
            None => return,
        };
        if buf.len() < LARGEST_READ {
            buf.resize(buf.len() * 2, 0);
        }
    }

    /// Waits for the next chunk of output and returns its stream and length (the bytes are in
    /// [`OutputReader::chunk`]), or `None` once the output is complete and the exit code known.
    pub async fn next(&mut self) -> std::io::Result<Option<(Stream, usize)>> {
        self.grow_filled();
        loop {
            if self.exited {
                return self.drain().await;
            }
            if self.stdout.is_none() && self.stderr.is_none() {
                // Output is over; wait for the status so it can be reported before closing.
                let _ = self.exit.wait_for(|code| code.is_some()).await;
                self.exited = true;
                continue;
            }
            let (stream, n) = tokio::select! {
                biased;
                r = read_opt(&mut self.stdout, &mut self.out_buf) => (Stream::Stdout, r?),
                r = read_opt(&mut self.stderr, &mut self.err_buf) => (Stream::Stderr, r?),
                _ = self.exit.wait_for(|code| code.is_some()) => {
                    self.exited = true;
                    continue;
                }
            };
            match (n, stream) {
                (0, Stream::Stdout) => self.stdout = None,
                (0, Stream::Stderr) => self.stderr = None,
                (n, stream) => return Ok(self.record(stream, n)),
            }
        }
    }

    /// The bytes of the chunk `next` just reported.
    pub fn chunk(&self, stream: Stream, len: usize) -> &[u8] {
        match stream {
            Stream::Stdout => &self.out_buf[..len],
            Stream::Stderr => &self.err_buf[..len],
        }
    }

    /// Notes a read of `n` bytes; the buffer that filled up grows before the next read (the
    /// caller may still be looking at this chunk).
    fn record(&mut self, stream: Stream, n: usize) -> Option<(Stream, usize)> {
        let len = match stream {
            Stream::Stdout => self.out_buf.len(),
            Stream::Stderr => self.err_buf.len(),
        };
        if n == len {
            self.filled = Some(stream);
        }
        Some((stream, n))
    }

    /// After exit: whatever is still buffered, without waiting.
    async fn drain(&mut self) -> std::io::Result<Option<(Stream, usize)>> {
        for (slot, buf, stream) in [
            (&mut self.stdout, &mut self.out_buf, Stream::Stdout),
            (&mut self.stderr, &mut self.err_buf, Stream::Stderr),
        ] {
            if let Some(source) = slot {
                match source.read_after_exit(buf).await? {
                    0 => *slot = None,
                    n => return Ok(Some((stream, n))),
                }
            }
        }
        Ok(None)
    }

    pub fn exit_code(&self) -> Option<i32> {
        *self.exit.borrow()
    }
}

async fn read_opt(source: &mut Option<Source>, buf: &mut [u8]) -> std::io::Result<usize> {
    match source {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}
