//! The exec audit log: `DATA/audit.log` (0600), JSON lines, appended and fsync'ed by one writer
//! thread in the order records were queued (one fsync covers every record that was waiting).
//!
//! Every exec gets a `start` record when the server decides (allowed or denied, who, what), and an
//! allowed one an `end` record later (exit code, bytes each way) from the node's summary, or from
//! the server when the node refused the upgrade. Records share an `auditID`.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("audit record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One line of the log.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecRecord {
    /// `start` or `end`.
    pub stage: &'static str,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// When the record was written.
    pub time: String,
    pub user: String,
    pub role: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// GET (WebSocket) or POST (SPDY).
    pub method: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct AuditLog {
    path: PathBuf,
    /// Lines for the writer thread, which appends and fsyncs them in order, many per fsync.
    queue: std::sync::mpsc::Sender<Job>,
    /// Start records of forwarded execs still waiting for their end, by audit id.
    pending: Mutex<HashMap<String, ExecRecord>>,
}

struct Job {
    line: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Pending entries kept at most (a node that dies never reports its ends).
const MAX_PENDING: usize = 100_000;

/// A queued record; [`Durable::wait`] returns once it is on disk. Records are written in the
/// order they were queued, so an end never precedes its start.
pub struct Durable {
    path: PathBuf,
    outcome: Result<oneshot::Receiver<Result<(), String>>, String>,
}

impl Durable {
    pub async fn wait(self) -> Result<(), AuditError> {
        let io = |e: String| AuditError::Io { path: self.path.display().to_string(), source: std::io::Error::other(e) };
        match self.outcome {
            Err(e) => Err(io(e)),
            Ok(rx) => rx.await.map_err(|_| io("the audit writer stopped".into()))?.map_err(io),
        }
    }
}

/// Appends queued lines; one fsync covers every line that was waiting.
fn writer(mut file: std::fs::File, queue: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while let Ok(more) = queue.try_recv() {
            jobs.push(more);
        }
        let written = jobs.iter().try_for_each(|j| file.write_all(&j.line)).and_then(|()| file.sync_data());
        let outcome = written.map_err(|e| e.to_string());
        for job in jobs {
            let _ = job.done.send(outcome.clone());
        }
    }
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let err = |source| AuditError::Io { path: path.display().to_string(), source };
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(err)?;
        let (queue, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("audit-log".into()).spawn(move || writer(file, rx)).map_err(err)?;
        Ok(AuditLog { path: path.to_path_buf(), queue, pending: Mutex::new(HashMap::new()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues one record.
    pub fn write(&self, record: &ExecRecord) -> Durable {
        let outcome = serde_json::to_vec(record).map_err(|e| e.to_string()).and_then(|mut line| {
            line.push(b'\n');
            let (done, rx) = oneshot::channel();
            self.queue.send(Job { line, done }).map_err(|_| "the audit writer stopped".to_string())?;
            Ok(rx)
        });
        Durable { path: self.path.clone(), outcome }
    }

    /// Appends one record and waits until it is on disk.
    pub async fn append(&self, record: &ExecRecord) -> Result<(), AuditError> {
        self.write(record).wait().await
    }

    /// Queues an exec's start record; an allowed exec is remembered for its end (at once, so an
    /// end that arrives before the start is on disk still finds it, and is written after it).
    pub fn start(&self, record: ExecRecord) -> Durable {
        let durable = self.write(&record);
        if record.allowed {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= MAX_PENDING {
                pending.clear();
            }
            pending.insert(record.audit_id.clone(), record);
        }
        durable
    }

    /// The start record of a pending exec, if `node` (when given) is where it was forwarded.
    pub fn pending(&self, audit_id: &str, node: Option<&str>) -> Option<ExecRecord> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.get(audit_id).filter(|r| node.is_none_or(|n| r.node == n)).cloned()
    }

    /// Writes the end record of a pending exec (once: a second end for the same id is ignored).
    pub async fn finish(
        &self,
        audit_id: &str,
        node: Option<&str>,
        fill: impl FnOnce(&mut ExecRecord),
    ) -> Result<bool, AuditError> {
        let start = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.get(audit_id) {
                Some(r) if node.is_none_or(|n| r.node == n) => pending.remove(audit_id),
                _ => None,
            }
        };
        let Some(start) = start else { return Ok(false) };
        let mut end = ExecRecord {
            stage: "end",
            time: crate::k8s::format_time_precise(time::OffsetDateTime::now_utc()),
            reason: None,
            start: start.start.clone(),
            ..start
        };
        fill(&mut end);
        self.append(&end).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_records_each_land_whole_and_in_queue_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = std::sync::Arc::new(AuditLog::open(&path).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let start =
                    ExecRecord { stage: "start", audit_id: format!("id{i}"), allowed: true, ..Default::default() };
                let durable = log.start(start);
                // An end queued before the start is on disk is still written after it.
                assert!(log.finish(&format!("id{i}"), None, |r| r.exit_code = Some(i)).await.unwrap());
                durable.wait().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 400);
        for i in 0..200 {
            let id = format!("id{i}");
            let pos = |stage: &str| lines.iter().position(|l| l["auditID"] == id.as_str() && l["stage"] == stage);
            assert!(pos("start").unwrap() < pos("end").unwrap(), "{id}");
        }
    }

    #[tokio::test]
    async fn records_are_appended_as_json_lines() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let start = ExecRecord {
            stage: "start",
            audit_id: "a1".into(),
            user: "admin".into(),
            allowed: true,
            node: "n1".into(),
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            ..Default::default()
        };
        log.start(start.clone()).wait().await.unwrap();
        log.start(ExecRecord { audit_id: "d1".into(), allowed: false, reason: Some("no".into()), ..start.clone() })
            .wait()
            .await
            .unwrap();
        assert!(log.pending("d1", None).is_none(), "denied execs have no end");
        assert!(log.pending("a1", Some("other")).is_none());
        assert!(!log.finish("a1", Some("other"), |_| {}).await.unwrap(), "only the exec's node may end it");
        assert!(log.finish("a1", Some("n1"), |r| r.exit_code = Some(3)).await.unwrap());
        assert!(!log.finish("a1", None, |_| {}).await.unwrap(), "ends are written once");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["stage"], "start");
        assert_eq!(lines[0]["auditID"], "a1");
        assert_eq!(lines[1]["allowed"], false);
        assert_eq!(lines[2]["stage"], "end");
        assert_eq!(lines[2]["exitCode"], 3);
        assert_eq!(lines[2]["command"][2], "exit 3");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
