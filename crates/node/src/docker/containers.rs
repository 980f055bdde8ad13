//! `/containers/...`: create, list, inspect, start, stop, kill, wait, attach, logs, remove.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use super::common::{ApiError, ApiResult, Body, Query, json, read_json, rfc3339, status};
use super::hijack::{self, Hijacked, StdinTarget};
use crate::engine::container::{Container, ContainerSpec, Record, Status};
use crate::engine::logs::{LogReader, split_lines};
use crate::engine::{Engine, EngineError, WaitCondition, parse_signal};

/// The parts of Docker's create body hatch reads; everything else is accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    hostname: String,
    user: String,
    tty: bool,
    open_stdin: bool,
    stdin_once: bool,
    env: Option<Vec<String>>,
    cmd: Option<StringOrList>,
    entrypoint: Option<StringOrList>,
    image: String,
    working_dir: String,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
    stop_timeout: Option<i64>,
    host_config: Option<HostConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct HostConfig {
    auto_remove: bool,
    privileged: bool,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
}

/// Old API versions allow `"Cmd": "sleep 1"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    List(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => s.split_whitespace().map(String::from).collect(),
            StringOrList::List(l) => l,
        }
    }
}

pub async fn create(api: &Api, req: Request<Incoming>) -> ApiResult {
    let query = Query::parse(req.uri().query());
    let name = query.get("name").map(String::from);
    let body: CreateBody = read_json(req.into_body()).await?;
    if body.image.is_empty() {
        return Err(ApiError::bad_request("config cannot be empty in order to create a container"));
    }
    let host = body.host_config.unwrap_or_default();
    // `--entrypoint ""` arrives as [""]: it resets the image's entrypoint.
    let entrypoint = body
        .entrypoint
        .map(StringOrList::into_vec)
        .map(|e| if e.len() == 1 && e[0].is_empty() { Vec::new() } else { e });
    let spec = ContainerSpec {
        image: body.image,
        cmd: body.cmd.map(StringOrList::into_vec).filter(|c| !c.is_empty()),
        entrypoint,
        env: body.env.unwrap_or_default(),
        working_dir: body.working_dir,
        user: body.user,
        hostname: body.hostname,
        tty: body.tty,
        open_stdin: body.open_stdin,
        stdin_once: body.stdin_once,
        labels: body.labels.unwrap_or_default(),
        stop_signal: body.stop_signal,
        stop_timeout: body.stop_timeout,
        auto_remove: host.auto_remove,
        privileged: host.privileged,
        cap_add: host.cap_add.unwrap_or_default(),
        cap_drop: host.cap_drop.unwrap_or_default(),
    };
    let c = api.engine.create(name, spec).await?;
    Ok(json(StatusCode::CREATED, &json!({ "Id": c.id, "Warnings": [] })))
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The STATUS column of `docker ps`.
fn status_text(r: &Record) -> String {
    let ago = |nanos: i64| super::common::human_duration(now_secs() - nanos / 1_000_000_000);
    match r.status {
        Status::Running => format!("Up {}", ago(r.started_at)),
        Status::Exited if r.finished_at > 0 => format!("Exited ({}) {} ago", r.exit_code, ago(r.finished_at)),
        Status::Exited => format!("Exited ({})", r.exit_code),
        Status::Created => "Created".into(),
        Status::Removing => "Removal In Progress".into(),
    }
}

fn command_text(r: &Record) -> String {
    std::iter::once(r.path.as_str()).chain(r.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}

fn summary(r: &Record) -> Value {
    json!({
        "Id": r.id,
        "Names": [format!("/{}", r.name)],
        "Image": r.spec.image,
        "ImageID": r.image_id,
        "Command": command_text(r),
        "Created": r.created / 1_000_000_000,
        "Ports": [],
        "Labels": r.spec.labels,
        "State": r.status.as_str(),
        "Status": status_text(r),
        "HostConfig": { "NetworkMode": "none" },
        "NetworkSettings": { "Networks": {} },
        "Mounts": [],
    })
}

pub fn list(api: &Api, req: &Request<Incoming>) -> ApiResult {
    let query = Query::parse(req.uri().query());
    let all = query.flag("all");
    let limit = query.int("limit")?.filter(|l| *l > 0).map(|l| l as usize);
    let mut out: Vec<Value> = api
        .engine
        .list()
        .iter()
        .map(|c| c.snapshot())
        .filter(|r| all || r.status == Status::Running)
        .map(|r| summary(&r))
        .collect();
    if let Some(limit) = limit {
        out.truncate(limit);
    }
    Ok(json(StatusCode::OK, &Value::Array(out)))
}

pub fn inspect(api: &Api, id: &str) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let r = c.snapshot();
    let running = r.status == Status::Running;
    Ok(json(
        StatusCode::OK,
        &json!({
            "Id": r.id,
            "Created": rfc3339(r.created),
            "Path": r.path,
            "Args": r.args,
            "State": {
                "Status": r.status.as_str(),
                "Running": running,
                "Paused": false,
                "Restarting": false,
                "OOMKilled": false,
                "Dead": false,
                "Pid": r.pid,
                "ExitCode": r.exit_code,
                "Error": r.error,
                "StartedAt": rfc3339(r.started_at),
                "FinishedAt": rfc3339(r.finished_at),
            },
            "Image": r.image_id,
            "ResolvConfPath": "",
            "HostnamePath": c.dir.join("hostname"),
            "HostsPath": c.dir.join("hosts"),
            "LogPath": Engine::log_path(&c),
            "Name": format!("/{}", r.name),
            "RestartCount": r.restart_count,
            "Driver": "overlay",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": null,
            "HostConfig": {
                "AutoRemove": r.spec.auto_remove,
                "Privileged": r.spec.privileged,
                "CapAdd": r.spec.cap_add,
                "CapDrop": r.spec.cap_drop,
                "NetworkMode": "none",
                "RestartPolicy": { "Name": "no", "MaximumRetryCount": 0 },
                // Clients (docker-py's `containers.run`) read logs only from drivers they know; hatch's
                // log serves the same API as json-file.
                "LogConfig": { "Type": "json-file", "Config": {} },
            },
            "GraphDriver": { "Name": "overlay", "Data": null },
            "Mounts": [],
            "Config": {
                "Hostname": r.spec.hostname,
                "Domainname": "",
                "User": r.spec.user,
                "AttachStdin": false,
                "AttachStdout": false,
                "AttachStderr": false,
                "Tty": r.spec.tty,
                "OpenStdin": r.spec.open_stdin,
                "StdinOnce": r.spec.stdin_once,
                "Env": r.env,
                "Cmd": r.spec.cmd,
                "Image": r.spec.image,
                "Volumes": null,
                "WorkingDir": r.working_dir,
                "Entrypoint": r.spec.entrypoint,
                "OnBuild": null,
                "Labels": r.spec.labels,
                "StopSignal": r.spec.stop_signal,
            },
            "NetworkSettings": { "Networks": {}, "Ports": {}, "IPAddress": "" },
        }),
    ))
}

pub async fn start(api: &Api, id: &str) -> ApiResult {
    let c = api.engine.lookup(id)?;
    api.engine.start(&c).await?;
    Ok(status(StatusCode::NO_CONTENT))
}

fn stop_options(query: &Query) -> Result<(Option<i64>, Option<i32>), ApiError> {
    let timeout = query.int("t")?.or(query.int("timeout")?);
    let signal = match query.get("signal").filter(|s| !s.is_empty()) {
        Some(s) => Some(parse_signal(s).ok_or_else(|| ApiError::bad_request(format!("invalid signal: {s}")))?),
        None => None,
    };
    Ok((timeout, signal))
}

pub async fn stop(api: &Api, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let (timeout, signal) = stop_options(&Query::parse(req.uri().query()))?;
    api.engine.stop(&c, timeout, signal).await?;
    Ok(status(StatusCode::NO_CONTENT))
}

pub async fn restart(api: &Api, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let (timeout, signal) = stop_options(&Query::parse(req.uri().query()))?;
    match api.engine.stop(&c, timeout, signal).await {
        Ok(()) | Err(EngineError::NotModified) => {}
        Err(e) => return Err(e.into()),
    }
    c.record().restart_count += 1;
    api.engine.start(&c).await?;
    Ok(status(StatusCode::NO_CONTENT))
}

pub async fn kill(api: &Api, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let query = Query::parse(req.uri().query());
    let signal = match query.get("signal").filter(|s| !s.is_empty()) {
        Some(s) => parse_signal(s).ok_or_else(|| ApiError::bad_request(format!("Invalid signal: {s}")))?,
        None => libc::SIGKILL,
    };
    api.engine.kill(&c, signal).await?;
    Ok(status(StatusCode::NO_CONTENT))
}

/// A body whose one chunk is produced later by `future` (headers go out at once).
fn deferred_body<F>(future: F) -> Body
where
    F: std::future::Future<Output = Bytes> + Send + 'static,
{
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(Frame::data(future.await)) });
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

pub fn wait(api: &Api, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let condition = match Query::parse(req.uri().query()).get("condition").unwrap_or("") {
        "" | "not-running" => WaitCondition::NotRunning,
        "next-exit" => WaitCondition::NextExit,
        "removed" => WaitCondition::Removed,
        other => return Err(ApiError::bad_request(format!("invalid condition: {other:?}"))),
    };
    let engine = api.engine.clone();
    let body = deferred_body(async move {
        let code = engine.wait(&c, condition).await;
        let mut out = serde_json::to_vec(&json!({ "StatusCode": code, "Error": null })).unwrap_or_default();
        out.push(b'\n');
        Bytes::from(out)
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

pub async fn attach(api: &Api, id: &str, mut req: Request<Incoming>, version: u32) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let query = Query::parse(req.uri().query());
    if c.status() == Status::Exited || c.status() == Status::Removing {
        return Err(ApiError {
            code: StatusCode::CONFLICT,
            message: "You cannot attach to a stopped container, start it first".into(),
        });
    }
    if !req.headers().contains_key(header::UPGRADE) {
        return Err(ApiError::bad_request("attach needs `Connection: Upgrade` and `Upgrade: tcp`"));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let record = c.snapshot();
    let tty = record.spec.tty;
    let streams = (query.flag("stdout"), query.flag("stderr"));
    let output = api.engine.attach_output(&c);
    let with_stdin = query.flag("stdin") && record.spec.open_stdin;
    let detach_keys = match query.get("detachKeys") {
        Some(keys) => Some(hijack::parse_detach_keys(keys).map_err(ApiError::bad_request)?),
        None if tty && with_stdin => hijack::parse_detach_keys("").ok(),
        None => None,
    };
    let target = if with_stdin {
        StdinTarget::Main { engine: api.engine.clone(), container: c.clone(), stdin_once: record.spec.stdin_once }
    } else {
        StdinTarget::None
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        if let Some(conn) = Hijacked::new(upgraded) {
            hijack::relay_attach(conn, output, target, tty, streams, detach_keys).await;
        }
    });
    let content_type = if tty || version < 42 {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    let mut resp = Response::new(super::common::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    Ok(resp)
}

pub async fn resize(api: &Api, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let (h, w) = super::exec::parse_size(&Query::parse(req.uri().query()))?;
    api.engine.resize(&c, h, w).await?;
    Ok(status(StatusCode::OK))
}

/// Frames one log line for the client.
fn log_frame(tty: bool, stderr: bool, timestamps: bool, ts: i64, data: &[u8]) -> Bytes {
    let mut payload = Vec::with_capacity(data.len() + 40);
    if timestamps {
        payload.extend_from_slice(rfc3339(ts).as_bytes());
        payload.push(b' ');
    }
    payload.extend_from_slice(data);
    if tty {
        return payload.into();
    }
    let stream = if stderr { hatch_wire::stdcopy::StdStream::Stderr } else { hatch_wire::stdcopy::StdStream::Stdout };
    let mut out = Vec::with_capacity(payload.len() + 8);
    if let Ok(header) = hatch_wire::stdcopy::encode_header(stream, payload.len()) {
        out.extend_from_slice(&header);
    }
    out.extend_from_slice(&payload);
    out.into()
}

pub async fn logs(api: &Api, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let query = Query::parse(req.uri().query());
    let (want_out, want_err) = (query.flag("stdout"), query.flag("stderr"));
    if !want_out && !want_err {
        return Err(ApiError::bad_request("Bad parameters: you must choose at least one stream"));
    }
    let follow = query.flag("follow");
    let timestamps = query.flag("timestamps");
    let tail = match query.get("tail").unwrap_or("all") {
        "all" | "" => None,
        n => Some(n.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid tail: {n}")))?),
    };
    let since = query.int("since")?.unwrap_or(0) * 1_000_000_000;
    let tty = c.record().spec.tty;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(stream_logs(c.clone(), tx, LogOptions { want_out, want_err, follow, timestamps, tail, since, tty }));
    let body = StreamBody::new(
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    );
    let mut resp = Response::new(BodyExt::boxed_unsync(body));
    let content_type =
        if tty { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" };
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

struct LogOptions {
    want_out: bool,
    want_err: bool,
    follow: bool,
    timestamps: bool,
    tail: Option<usize>,
    since: i64,
    tty: bool,
}

async fn stream_logs(c: Arc<Container>, tx: tokio::sync::mpsc::Sender<Bytes>, o: LogOptions) {
    let Ok(Some(mut reader)) = LogReader::open(&Engine::log_path(&c)).await else { return };
    let mut first = true;
    loop {
        // Register for the wake-up before reading, so an append in between is not missed.
        let appended = c.log_appended.notified();
        let running = c.is_running();
        let records = match reader.read_available().await {
            Ok(r) => r,
            Err(_) => return,
        };
        let mut lines: Vec<_> = split_lines(records)
            .into_iter()
            .filter(|l| if l.stderr { o.want_err } else { o.want_out })
            .filter(|l| l.timestamp >= o.since)
            .collect();
        if first && let Some(n) = o.tail {
            lines = lines.split_off(lines.len().saturating_sub(n));
        }
        first = false;
        for l in lines {
            if tx.send(log_frame(o.tty, l.stderr, o.timestamps, l.timestamp, &l.data)).await.is_err() {
                return;
            }
        }
        if !o.follow || !running {
            return;
        }
        let mut lifecycle = c.lifecycle();
        tokio::select! {
            _ = appended => {}
            _ = lifecycle.wait_for(|l| l.status != Status::Running) => {}
            _ = tx.closed() => return,
        }
    }
}

pub async fn remove(api: &Api, id: &str, req: &Request<Incoming>) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let force = Query::parse(req.uri().query()).flag("force");
    api.engine.remove(&c, force).await?;
    Ok(status(StatusCode::NO_CONTENT))
}
