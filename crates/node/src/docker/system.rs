//! `/_ping`, `/version`, `/info`.

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;

use super::common::{ApiResponse, empty, full, json};
use super::{API_VERSION, Api, MIN_API_VERSION};
use crate::engine::container::Status;

/// The engine version hatch reports (its own).
pub const ENGINE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-hatch");

pub fn ping(method: &Method) -> ApiResponse {
    let mut resp = Response::new(if method == Method::HEAD { empty() } else { full("OK") });
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("Builder-Version", HeaderValue::from_static("1"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn kernel_version() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn version() -> ApiResponse {
    json(
        StatusCode::OK,
        &json!({
            "Platform": { "Name": "hatch" },
            "Components": [{
                "Name": "Engine",
                "Version": ENGINE_VERSION,
                "Details": { "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux", "Arch": "amd64" }
            }],
            "Version": ENGINE_VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": "",
            "Os": "linux",
            "Arch": "amd64",
            "KernelVersion": kernel_version(),
            "BuildTime": "",
        }),
    )
}

pub fn info(api: &Api) -> ApiResponse {
    let containers = api.engine.list();
    let running = containers.iter().filter(|c| c.status() == Status::Running).count();
    let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let images = api.engine.images.list().len();
    json(
        StatusCode::OK,
        &json!({
            "ID": hostname,
            "Name": hostname,
            "Containers": containers.len(),
            "ContainersRunning": running,
            "ContainersPaused": 0,
            "ContainersStopped": containers.len() - running,
            "Images": images,
            "Driver": "overlay",
            "DriverStatus": [],
            "Plugins": { "Volume": [], "Network": [], "Authorization": null, "Log": [] },
            "MemoryLimit": false,
            "SwapLimit": false,
            "CpuCfsPeriod": false,
            "CpuCfsQuota": false,
            "IPv4Forwarding": false,
            "Debug": false,
            "NFd": 0,
            "NGoroutines": 0,
            "SystemTime": super::common::rfc3339(time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64),
            "LoggingDriver": "hatch",
            "CgroupDriver": "cgroupfs",
            "NEventsListener": 0,
            "KernelVersion": kernel_version(),
            "OperatingSystem": "hatch",
            "OSType": "linux",
            "Architecture": "x86_64",
            "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "MemTotal": 0,
            "DockerRootDir": "",
            "ServerVersion": ENGINE_VERSION,
            "Runtimes": { "runc": { "path": "runc" } },
            "DefaultRuntime": "runc",
            "Swarm": { "LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": false },
            "LiveRestoreEnabled": true,
            "Isolation": "",
            "InitBinary": "hatch-init",
            "SecurityOptions": [],
            "Warnings": [],
        }),
    )
}
