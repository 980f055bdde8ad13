//! Real kubectl binaries (1.27–1.33) against the streaming server, through a minimal fake API
//! front in this file: discovery, the pod GET, and the exec request handed in-process to
//! `StreamingServer::handle` with its path rewritten (as `hatch up` does). No hatch server is
//! involved. Skipped, loudly, when the versioned kubectl binaries are not installed.

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use hatch_node::k8s::{Body, StreamingServer};

/// The `Upgrade` header of every exec request, to see which transport kubectl used.
static UPGRADES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn take_upgrades() -> Vec<String> {
    std::mem::take(&mut *UPGRADES.lock().unwrap_or_else(|p| p.into_inner()))
}

fn kubectl(version: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let kubectl = std::env::split_paths(&path).map(|d| d.join("kubectl")).find(|p| p.exists())?;
    let p = std::fs::canonicalize(kubectl).ok()?.parent()?.join(format!("kubectl.{version}"));
    p.exists().then_some(p)
}

fn json(value: serde_json::Value) -> hyper::Response<Body> {
    let body = Full::new(Bytes::from(value.to_string())).map_err(|never: Infallible| match never {}).boxed_unsync();
    let mut resp = hyper::Response::new(body);
    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    resp
}

async fn api(server: Arc<StreamingServer>, addr: String, mut req: hyper::Request<Incoming>) -> hyper::Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api"] => json(serde_json::json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
        })),
        ["apis"] => json(serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})),
        ["api", "v1"] => json(serde_json::json!({
            "kind": "APIResourceList", "groupVersion": "v1",
            "resources": [{"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["get", "list"]}],
        })),
        ["api", "v1", "namespaces", ns, "pods", pod] => json(serde_json::json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": pod, "namespace": ns},
            "spec": {"containers": [{"name": MAIN, "image": "busybox"}, {"name": IDLE, "image": "busybox"}]},
            "status": {"phase": "Running"},
        })),
        ["api", "v1", "namespaces", ns, "pods", pod, "exec"] => {
            let upgrade = req.headers().get("upgrade").and_then(|v| v.to_str().ok()).unwrap_or("").to_lowercase();
            UPGRADES.lock().unwrap_or_else(|p| p.into_inner()).push(upgrade);
            let query = req.uri().query().unwrap_or("").to_owned();
            let container = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "container")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let uri = format!("/exec/{ns}/{pod}/{container}?{query}");
            match uri.parse() {
                Ok(uri) => {
                    *req.uri_mut() = uri;
                    server.handle(req).await
                }
                Err(_) => json(serde_json::json!({"kind": "Status", "status": "Failure", "code": 400})),
            }
        }
        _ => {
            let mut resp =
                json(serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}));
            *resp.status_mut() = http::StatusCode::NOT_FOUND;
            resp
        }
    }
}

/// Serves the fake API on loopback; returns the kubeconfig that points kubectl at it.
async fn fake_api(fx: &Fixture, dir: &Path) -> Result<PathBuf, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let server = fx.server.clone();
    let served = addr.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let server = server.clone();
            let addr = served.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let server = server.clone();
                    let addr = addr.clone();
                    async move { Ok::<_, Infallible>(api(server, addr, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: {NS}\ncurrent-context: x\n"
        ),
    )?;
    Ok(kubeconfig)
}

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

async fn run_kubectl(
    bin: &Path,
    kubeconfig: &Path,
    home: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: &[u8],
) -> Result<Run, Error> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env("KUBECONFIG", kubeconfig).env("HOME", home);
    if bin.file_name().is_some_and(|n| n.to_string_lossy().starts_with("kubectl")) {
        cmd.arg("--cache-dir").arg(home.join("cache"));
    }
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let mut input = child.stdin.take().ok_or_else(|| err("no stdin pipe"))?;
    let data = stdin.to_vec();
    let writer = tokio::spawn(async move {
        let _ = input.write_all(&data).await;
        // Dropping the pipe is kubectl's stdin EOF.
    });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??;
    let _ = writer.await;
    Ok(Run { code: out.status.code(), stdout: out.stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_27_to_1_33_exec() -> TestResult {
    let versions = ["1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33"];
    let found: Vec<(&str, PathBuf)> = versions.iter().filter_map(|v| kubectl(v).map(|p| (*v, p))).collect();
    if found.is_empty() {
        eprintln!("SKIPPED: no versioned kubectl binaries (kubectl.1.27 … kubectl.1.33) next to kubectl");
        return Ok(());
    }
    with_fixture(async |fx| {
        let home = tempfile::tempdir()?;
        let kubeconfig = fake_api(fx, home.path()).await?;
        let mut data = vec![0u8; 3 << 20];
        rand::fill(&mut data[..]);
        let sha = hex::encode(sha2::Sha256::digest(&data));
        for (version, bin) in &found {
            // 1.29 speaks WebSocket only when asked; the others use their default transport.
            let modes: &[&[(&str, &str)]] =
                if *version == "1.29" { &[&[], &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "true")]] } else { &[&[]] };
            for env in modes {
                let what = format!("kubectl {version} {env:?}");
                let k = async |args: &[&str], stdin: &[u8]| {
                    run_kubectl(bin, &kubeconfig, home.path(), env, args, stdin).await
                };
                let websocket = !matches!(*version, "1.27" | "1.28") && (*version != "1.29" || !env.is_empty());
                let expected = if websocket { "websocket" } else { "spdy/3.1" };
                take_upgrades();
                let r = k(&["exec", POD, "-c", MAIN, "--", "sh", "-c", "echo out; echo err >&2; exit 3"], b"").await?;
                assert_eq!(r.code, Some(3), "{what}: {}", r.stderr);
                // No fallback: the first transport tried was served.
                assert_eq!(take_upgrades(), [expected], "{what}");
                assert_eq!(r.stdout, b"out\n", "{what}");
                assert!(r.stderr.starts_with("err\n"), "{what}: {}", r.stderr);

                let r = k(&["exec", "-i", POD, "-c", MAIN, "--", "sha256sum"], &data).await?;
                assert_eq!(
                    (r.code, String::from_utf8_lossy(&r.stdout).into_owned()),
                    (Some(0), format!("{sha}  -\n")),
                    "{what}: {}",
                    r.stderr
                );

                let r = k(&["exec", POD, "-c", MAIN, "--", "no-such-command"], b"").await?;
                assert_eq!(r.code, Some(127), "{what}: {}", r.stderr);

                // -it needs a terminal: script(1) gives kubectl one.
                let line = format!(
                    "stty rows 45 cols 123; {} --cache-dir {} exec -it {POD} -c {MAIN} -- sh -c 'tty; stty size; exit 7'",
                    bin.display(),
                    home.path().join("cache").display()
                );
                let script = Path::new("/usr/bin/script");
                if script.exists() {
                    let r =
                        run_kubectl(script, &kubeconfig, home.path(), env, &["-qec", &line, "/dev/null"], b"").await?;
                    let out = String::from_utf8_lossy(&r.stdout);
                    assert_eq!(r.code, Some(7), "{what} -it: {out} {}", r.stderr);
                    assert!(out.contains("/dev/pts/"), "{what} -it: {out}");
                    // The terminal had kubectl's size from the start, not 24x80 and a resize.
                    assert!(out.contains("45 123"), "{what} -it: {out}");
                }

                let r = k(&["exec", POD, "-c", IDLE, "--", "true"], b"").await?;
                assert_eq!(r.code, Some(1), "{what}");
                assert!(r.stderr.contains("is not running"), "{what}: {}", r.stderr);
            }
        }
        Ok(())
    })
    .await
}
