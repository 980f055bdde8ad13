//! `POST /containers/{id}/exec`, `POST /exec/{id}/start|resize`, `GET /exec/{id}/json`.

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::Api;
use super::common::{ApiError, ApiResult, Query, empty, json, read_json, status};
use super::hijack::{self, Hijacked};
use crate::engine::ExecStarted;
use crate::engine::exec::ExecSpec;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ExecConfig {
    user: String,
    privileged: bool,
    tty: bool,
    console_size: Option<[u16; 2]>,
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    // Go decodes JSON keys case-insensitively; docker-py sends this one as `detachKeys`.
    #[serde(alias = "detachKeys")]
    detach_keys: String,
    env: Option<Vec<String>>,
    working_dir: String,
    cmd: Option<Vec<String>>,
}

pub async fn create(api: &Api, id: &str, req: Request<Incoming>) -> ApiResult {
    let c = api.engine.lookup(id)?;
    let config: ExecConfig = read_json(req.into_body()).await?;
    if !config.detach_keys.is_empty() {
        hijack::parse_detach_keys(&config.detach_keys).map_err(ApiError::bad_request)?;
    }
    let spec = ExecSpec {
        cmd: config.cmd.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        working_dir: config.working_dir,
        user: config.user,
        privileged: config.privileged,
        tty: config.tty,
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        detach_keys: config.detach_keys,
        console_size: config.console_size.filter(|_| config.tty).map(|[h, w]| (h, w)),
    };
    let session = api.engine.exec_create(&c, spec)?;
    Ok(json(StatusCode::CREATED, &json!({ "Id": session.id })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct StartConfig {
    detach: bool,
    tty: bool,
    console_size: Option<[u16; 2]>,
}

pub async fn start(api: &Api, id: &str, mut req: Request<Incoming>, version: u32) -> ApiResult {
    let received = std::time::Instant::now();
    let session = api.engine.exec_lookup(id)?;
    let wants_upgrade = req.headers().contains_key(header::UPGRADE);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config: StartConfig = read_json(req.into_body()).await?;
    let tty = session.spec.tty || config.tty;
    if let Some([h, w]) = config.console_size.filter(|_| tty && version >= 42) {
        let _ = session.resize(h, w);
    }
    if config.detach {
        return match api.engine.exec_start(&session, true).await? {
            ExecStarted::Failed { message, .. } => Err(ApiError::bad_request(message)),
            _ => Ok(status(StatusCode::OK)),
        };
    }
    if !wants_upgrade {
        return Err(ApiError::bad_request("exec start without Detach needs `Connection: Upgrade` and `Upgrade: tcp`"));
    }
    // The process starts before the response goes out: the client's first byte finds it running.
    let started = api.engine.exec_start(&session, false).await?;
    // The benchmark reads this (HATCH_LOG=hatch_timing=debug): request received to process running.
    tracing::debug!(target: "hatch_timing", exec = %session.id, start_us = received.elapsed().as_micros() as u64, "exec started");
    let detach_keys =
        if tty && session.spec.attach_stdin { hijack::parse_detach_keys(&session.spec.detach_keys).ok() } else { None };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "exec upgrade failed");
                if let ExecStarted::Running(run) = started {
                    run.hang_up();
                }
                return;
            }
        };
        let Some(conn) = Hijacked::new(upgraded) else {
            tracing::warn!("exec upgrade: unexpected connection type");
            return;
        };
        match started {
            ExecStarted::Running(run) => hijack::relay_exec(conn, run, tty, detach_keys).await,
            ExecStarted::Failed { message, .. } => hijack::write_failure(conn, tty, &message).await,
            ExecStarted::Detached => {}
        }
    });
    let content_type = if tty || version < 42 {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    Ok(resp)
}

pub(super) fn parse_size(query: &Query) -> Result<(u16, u16), ApiError> {
    let dim = |key: &str| -> Result<u16, ApiError> {
        query
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::bad_request(format!("invalid or missing {key} for resize")))
    };
    Ok((dim("h")?, dim("w")?))
}

pub fn resize(api: &Api, id: &str, req: &Request<Incoming>) -> ApiResult {
    let session = api.engine.exec_lookup(id)?;
    let (h, w) = parse_size(&Query::parse(req.uri().query()))?;
    session.resize(h, w).map_err(|e| ApiError::bad_request(format!("resize: {e}")))?;
    Ok(status(StatusCode::OK))
}

pub fn inspect(api: &Api, id: &str) -> ApiResult {
    let session = api.engine.exec_lookup(id)?;
    let state = session.state().clone();
    let s = &session.spec;
    let (entrypoint, arguments) = s.cmd.split_first().map(|(e, a)| (e.clone(), a.to_vec())).unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &json!({
            "ID": session.id,
            "Running": state.running,
            "ExitCode": state.exit_code,
            "ProcessConfig": {
                "tty": s.tty,
                "entrypoint": entrypoint,
                "arguments": arguments,
                "privileged": s.privileged,
                "user": s.user,
            },
            "OpenStdin": s.attach_stdin,
            "OpenStderr": s.attach_stderr,
            "OpenStdout": s.attach_stdout,
            "CanRemove": !state.running && state.started,
            "ContainerID": session.container_id,
            "DetachKeys": s.detach_keys,
            "Pid": state.pid,
        }),
    ))
}
