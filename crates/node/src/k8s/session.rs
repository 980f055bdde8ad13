//! What both transports share: starting the exec, relaying its output, feeding stdin and
//! resizes, the final Status, and the summary for the observer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};

use hatch_runtime::stdio::Sink;
use hatch_wire::exec_options::ExecOptions;
use hatch_wire::resize::ResizeDecoder;
use hatch_wire::status::Status;

use super::{ExecSummary, StreamingServer};
use crate::engine::ExecStarted;
use crate::engine::exec::{ExecControl, ExecSession, OutputReader, RunningExec, Stream};

/// Client stdin chunks queued for the process before the client's reader waits: the process's
/// pace is the only backpressure, as with the kubelet. Bounded in count and in bytes (a message
/// larger than the byte budget takes all of it), so a client cannot park much memory here.
const STDIN_QUEUE: usize = 64;
const STDIN_QUEUE_BYTES: usize = 1 << 20;

/// Queued client input and the share of the byte budget it holds until written.
pub(super) type StdinChunk = (Bytes, tokio::sync::OwnedSemaphorePermit);
/// After a hang-up, how long to wait for the exit status to report it.
const EXIT_AFTER_HANGUP: Duration = Duration::from_secs(10);
/// After the last message, how long the client gets to close its side.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How the client's side of a session ended.
#[derive(Debug)]
pub(super) enum ClientEnd {
    /// It closed the session in order (a WebSocket close frame).
    Closed,
    /// The connection is gone.
    Gone(String),
    /// It broke the protocol.
    Protocol(String),
}

impl ClientEnd {
    pub(super) fn describe(&self) -> String {
        match self {
            ClientEnd::Closed => "client closed the session before the process ended".to_owned(),
            ClientEnd::Gone(why) => format!("client went away: {why}"),
            ClientEnd::Protocol(why) => format!("protocol error: {why}"),
        }
    }
}

/// The result of a client reader task.
pub(super) fn join_end(result: Result<ClientEnd, JoinError>) -> ClientEnd {
    result.unwrap_or_else(|e| ClientEnd::Gone(format!("client reader failed: {e}")))
}

/// How the process side ended, to be told to the client.
#[derive(Debug)]
pub(super) enum Ending {
    Exited(i32),
    /// Nothing ran (126: not executable, 127: not found, …).
    Failed {
        code: i32,
        message: String,
    },
    Detached,
    /// The engine failed.
    Error(String),
}

impl Ending {
    pub(super) fn exit_code(&self) -> Option<i32> {
        match self {
            Ending::Exited(code) | Ending::Failed { code, .. } => Some(*code),
            Ending::Detached | Ending::Error(_) => None,
        }
    }

    pub(super) fn error(&self) -> Option<String> {
        match self {
            Ending::Exited(_) | Ending::Detached => None,
            Ending::Failed { message, .. } | Ending::Error(message) => Some(message.clone()),
        }
    }
}

/// What [`Exec::execute`] leads to.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Tell the client how it ended, then close.
    Report(Ending),
    /// The client is gone or broke the protocol; the process was hung up.
    Abandoned { end: ClientEnd, exit_code: Option<i32> },
}

/// Where process output goes: a WebSocket channel or a SPDY stream.
pub(super) trait Output {
    /// Sends one chunk; an error means the client can no longer be reached.
    async fn send(&mut self, stream: Stream, data: &[u8]) -> Result<(), String>;
}

enum Relayed {
    Done,
    OutputFailed(String),
    Client(ClientEnd),
}

/// One exec request from its upgrade to its summary.
pub(super) struct Exec {
    server: Arc<StreamingServer>,
    pub(super) session: Arc<ExecSession>,
    pub(super) opts: ExecOptions,
    summary: ExecSummary,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    /// A process started before the upgrade completed (see [`Exec::start_early`]).
    early: Option<Result<ExecStarted, crate::engine::EngineError>>,
}

impl Exec {
    pub(super) fn new(
        server: Arc<StreamingServer>,
        session: Arc<ExecSession>,
        opts: ExecOptions,
        summary: ExecSummary,
    ) -> Exec {
        Exec { server, session, opts, summary, bytes_in: Arc::new(AtomicU64::new(0)), bytes_out: 0, early: None }
    }

    /// Starts a non-terminal process right away, while the 101 travels to the client, rather than
    /// once the session is set up: the start overlaps the upgrade. For WebSocket only: a WebSocket
    /// session is complete at the 101, while SPDY (like the kubelet) runs nothing until the client
    /// has opened every stream. A terminal session waits for the client's first size instead, so
    /// its process starts with the right one. What the process writes meanwhile waits in its pipes.
    pub(super) async fn start_early(&mut self) {
        if !self.opts.tty {
            self.early = Some(self.server.engine.exec_start(&self.session, self.opts.detach).await);
        }
    }

    pub(super) fn summary(&self) -> &ExecSummary {
        &self.summary
    }

    /// Starts the process and relays its output to `out` until it is complete, or until the
    /// client's reader task (`client`) ends first. Client stdin arrives on `stdin`.
    pub(super) async fn execute<O: Output>(
        &mut self,
        out: &mut O,
        client: &mut JoinHandle<ClientEnd>,
        stdin: mpsc::Receiver<StdinChunk>,
    ) -> Outcome {
        let started = match self.early.take() {
            Some(started) => started,
            None => self.server.engine.exec_start(&self.session, self.opts.detach).await,
        };
        let run = match started {
            Err(e) => return Outcome::Report(Ending::Error(e.to_string())),
            Ok(ExecStarted::Detached) => return Outcome::Report(Ending::Detached),
            Ok(ExecStarted::Failed { code, message }) => {
                // kubectl prints only "command terminated with exit code N": say why on the
                // stream the process's own complaint would have used.
                let (stream, wanted, text) = if self.opts.tty {
                    (Stream::Stdout, self.opts.stdout, format!("{message}\r\n"))
                } else {
                    (Stream::Stderr, self.opts.stderr, format!("{message}\n"))
                };
                if wanted && out.send(stream, text.as_bytes()).await.is_ok() {
                    self.bytes_out += text.len() as u64;
                }
                return Outcome::Report(Ending::Failed { code, message });
            }
            Ok(ExecStarted::Running(run)) => run,
        };
        let exit = run.exit();
        let RunningExec { session: _, stdin: sink, mut output, control } = run;
        let stdin_task = spawn_stdin(sink, stdin, self.bytes_in.clone());
        let relayed = self.relay(out, &mut output, client).await;
        // Input for a process that is over (or abandoned) goes nowhere; a terminal would
        // otherwise accept it until its buffer fills.
        stdin_task.abort();
        match relayed {
            Relayed::Done => match output.exit_code() {
                Some(code) => Outcome::Report(Ending::Exited(code)),
                None => Outcome::Report(Ending::Error("exit status unknown".to_owned())),
            },
            Relayed::OutputFailed(e) => {
                let _ = control.try_send(ExecControl::Hangup);
                drop(output);
                let _ = wait_exit(exit).await;
                Outcome::Report(Ending::Error(format!("reading process output: {e}")))
            }
            Relayed::Client(end) => {
                tracing::debug!(session = %self.session.id, end = ?end, "k8s exec client left; hanging up");
                let _ = control.try_send(ExecControl::Hangup);
                drop(output);
                Outcome::Abandoned { end, exit_code: wait_exit(exit).await }
            }
        }
    }

    async fn relay<O: Output>(
        &mut self,
        out: &mut O,
        output: &mut OutputReader,
        client: &mut JoinHandle<ClientEnd>,
    ) -> Relayed {
        loop {
            tokio::select! {
                next = output.next() => match next {
                    Ok(Some((stream, len))) => {
                        let data = output.chunk(stream, len);
                        // A client that stopped reading must not keep us from noticing it left.
                        tokio::select! {
                            sent = out.send(stream, data) => {
                                if let Err(e) = sent {
                                    return Relayed::Client(ClientEnd::Gone(e));
                                }
                            }
                            end = &mut *client => return Relayed::Client(join_end(end)),
                        }
                        self.bytes_out += len as u64;
                    }
                    Ok(None) => return Relayed::Done,
                    Err(e) => return Relayed::OutputFailed(e.to_string()),
                },
                end = &mut *client => return Relayed::Client(join_end(end)),
            }
        }
    }

    /// The Status for the error channel.
    pub(super) fn status(&self, ending: &Ending) -> Status {
        match ending {
            Ending::Exited(code) => {
                Status::from_exit_code(*code, &format!("command '{}' exited with {code}", self.opts.command.join(" ")))
            }
            Ending::Detached => Status::success(),
            Ending::Failed { code, message } if *code != 0 => Status::from_exit_code(*code, message),
            Ending::Failed { message, .. } | Ending::Error(message) => Status::internal_error(message),
        }
    }

    /// Drops the engine's record of the exec and reports the summary.
    pub(super) fn finish(mut self, exit_code: Option<i32>, error: Option<String>) {
        // A process started early whose session never got going has no client: hang it up.
        if let Some(Ok(ExecStarted::Running(run))) = self.early.take() {
            run.hang_up();
        }
        self.server.engine.exec_forget(&self.session.id);
        self.summary.exit_code = exit_code;
        self.summary.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.summary.bytes_out = self.bytes_out;
        self.summary.ended = SystemTime::now();
        self.summary.error = error;
        self.server.report(self.summary);
    }
}

async fn wait_exit(mut exit: watch::Receiver<Option<i32>>) -> Option<i32> {
    match tokio::time::timeout(EXIT_AFTER_HANGUP, exit.wait_for(|code| code.is_some())).await {
        Ok(Ok(code)) => *code,
        _ => None,
    }
}

/// Copies queued client input to the process; the queue's end (client EOF) is the process's EOF.
fn spawn_stdin(sink: Option<Sink>, mut input: mpsc::Receiver<StdinChunk>, counter: Arc<AtomicU64>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Without a sink the queue is dropped here, and the reader stops feeding it.
        let Some(mut sink) = sink else { return };
        while let Some((data, _budget)) = input.recv().await {
            if let Err(e) = sink.write_all(&data).await {
                // The process stopped reading; its output still flows, later input is dropped.
                tracing::debug!(error = %e, "exec stdin closed by the process");
                return;
            }
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    })
}

/// The client side of stdin, held by a reader task.
pub(super) struct StdinFeed {
    tx: Option<mpsc::Sender<StdinChunk>>,
    budget: Arc<tokio::sync::Semaphore>,
}

impl StdinFeed {
    /// The feed and the queue it fills. With `wanted` false (the exec has no stdin) input is
    /// dropped, as the kubelet drops data for channels it did not open.
    pub(super) fn new(wanted: bool) -> (StdinFeed, mpsc::Receiver<StdinChunk>) {
        let (tx, rx) = mpsc::channel(STDIN_QUEUE);
        let budget = Arc::new(tokio::sync::Semaphore::new(STDIN_QUEUE_BYTES));
        (StdinFeed { tx: wanted.then_some(tx), budget }, rx)
    }

    pub(super) async fn send(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let Some(tx) = &self.tx else { return };
        // Both values are at most STDIN_QUEUE_BYTES, which fits a u32.
        let share = u32::try_from(data.len().min(STDIN_QUEUE_BYTES)).unwrap_or(u32::MAX);
        let sent = match self.budget.clone().acquire_many_owned(share).await {
            Ok(permit) => tx.send((data, permit)).await.is_ok(),
            Err(_) => false,
        };
        if !sent {
            self.tx = None;
        }
    }

    /// The client's stdin EOF.
    pub(super) fn close(&mut self) {
        self.tx = None;
    }
}

/// Applies the resize channel's stream of JSON sizes to the exec's terminal.
pub(super) struct Resizer {
    decoder: ResizeDecoder,
    session: Arc<ExecSession>,
    broken: bool,
}

impl Resizer {
    pub(super) fn new(session: Arc<ExecSession>) -> Resizer {
        Resizer { decoder: ResizeDecoder::new(), session, broken: false }
    }

    pub(super) fn push(&mut self, data: &[u8]) {
        if self.broken {
            return;
        }
        self.decoder.push(data);
        loop {
            match self.decoder.next_size() {
                Ok(Some(size)) if size.width == 0 || size.height == 0 => {}
                Ok(Some(size)) => {
                    if let Err(e) = self.session.resize(size.height, size.width) {
                        tracing::debug!(error = %e, "exec resize");
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    // Like the kubelet: stop reading sizes, keep the session.
                    tracing::debug!(error = %e, "ignoring the rest of the resize stream");
                    self.broken = true;
                    return;
                }
            }
        }
    }
}
