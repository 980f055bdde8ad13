//! The k8s streaming server over WebSocket, against a real engine and container, with this
//! crate's own client (tokio-tungstenite + `hatch_wire::k8s_ws`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use hatch_wire::k8s_ws::{Subprotocol, channel};
use hatch_wire::status::ExecOutcome;
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const V5: &str = "v5.channel.k8s.io";

fn outcome(c: &WsClient) -> ExecOutcome {
    ExecOutcome::from_error_stream(&c.seen.error, c.protocol.status_is_json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_separates_streams_and_reports_the_exit_code() -> TestResult {
    with_fixture(async |fx| {
        let audit = audit_id("v5-exit");
        let path = exec_path(MAIN, &["sh", "-c", "echo out; echo err >&2; exit 3"], &["stdout", "stderr"]);
        let mut c = ws_connect(fx.addr, &path, &[V5], &audit).await?;
        assert_eq!(c.protocol, Subprotocol::V5);
        c.finish().await?;
        // The "ready" message: an empty message on stdout before anything else.
        assert_eq!(c.seen.channels.first(), Some(&channel::STDOUT));
        assert_eq!(c.seen_text().0, "out\n");
        assert_eq!(c.seen_text().1, "err\n");
        assert_eq!(outcome(&c), ExecOutcome::Exit(3));
        let status: serde_json::Value = serde_json::from_slice(&c.seen.error)?;
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(c.seen.close_code, Some(1000));

        let s = fx.summary(&audit).await?;
        assert_eq!((s.namespace.as_str(), s.pod.as_str(), s.container.as_str()), (NS, POD, MAIN));
        assert_eq!(s.command, ["sh", "-c", "echo out; echo err >&2; exit 3"]);
        assert_eq!(s.exit_code, Some(3));
        assert_eq!(s.bytes_out, 8);
        assert_eq!(s.error, None);
        assert!(s.ended >= s.started);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_success_and_exec_failures_126_127() -> TestResult {
    with_fixture(async |fx| {
        let mut c = ws_connect(fx.addr, &exec_path(MAIN, &["true"], &["stdout", "stderr"]), &[V5], "ok").await?;
        c.finish().await?;
        assert_eq!(c.seen.error, br#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(c.seen.close_code, Some(1000));

        for (argv, code, complaint) in
            [(&["/etc/passwd"][..], 126, "permission denied"), (&["no-such-command", "x"][..], 127, "not found")]
        {
            let audit = audit_id("fail");
            let mut c = ws_connect(fx.addr, &exec_path(MAIN, argv, &["stdout", "stderr"]), &[V5], &audit).await?;
            c.finish().await?;
            assert_eq!(outcome(&c), ExecOutcome::Exit(code), "{argv:?}: {:?}", c.seen_text());
            let stderr = c.seen_text().1.to_lowercase();
            assert!(stderr.contains(complaint), "{argv:?}: stderr {stderr:?}");
            assert_eq!(c.seen.close_code, Some(1000));
            let s = fx.summary(&audit).await?;
            assert_eq!(s.exit_code, Some(i32::from(code)));
            assert!(s.error.is_some());
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_close_is_stdin_eof_and_10_mib_arrive_intact() -> TestResult {
    with_fixture(async |fx| {
        let mut data = vec![0u8; 10 << 20];
        rand::fill(&mut data[..]);
        let expected = hex::encode(sha2::Sha256::digest(&data));
        let audit = audit_id("v5-sha");
        let path = exec_path(MAIN, &["sha256sum"], &["stdin", "stdout", "stderr"]);
        let mut c = ws_connect(fx.addr, &path, &[V5], &audit).await?;
        c.stdin(&data).await?;
        c.close_stdin().await?;
        c.finish().await?;
        assert_eq!(c.seen_text().0, format!("{expected}  -\n"));
        assert_eq!(outcome(&c), ExecOutcome::Exit(0));
        let s = fx.summary(&audit).await?;
        assert_eq!(s.bytes_in, 10 << 20);

        // Output keeps flowing after stdin's EOF.
        let path = exec_path(MAIN, &["sh", "-c", "cat; sleep 1; echo after-eof"], &["stdin", "stdout"]);
        let mut c = ws_connect(fx.addr, &path, &[V5], "eof-then-output").await?;
        c.stdin(b"typed\n").await?;
        c.close_stdin().await?;
        // A repeated CLOSE for the same channel does nothing.
        c.close_stdin().await?;
        c.finish().await?;
        assert_eq!(c.seen_text().0, "typed\nafter-eof\n");
        assert_eq!(outcome(&c), ExecOutcome::Exit(0));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_protocols_and_no_protocol() -> TestResult {
    with_fixture(async |fx| {
        let argv = ["sh", "-c", "echo hi; echo oops >&2; exit 3"];
        for offered in [
            &["v4.channel.k8s.io"][..],
            &["v4.base64.channel.k8s.io"],
            &["channel.k8s.io"],
            &["base64.channel.k8s.io"],
            // A browser-style offer gets v4, the best of what it offered.
            &["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"],
            &[],
        ] {
            let path = exec_path(MAIN, &argv, &["stdout", "stderr"]);
            let mut c = ws_connect(fx.addr, &path, offered, "old").await?;
            c.finish().await?;
            let (out, err, status, close) = c.seen_text();
            assert_eq!((out.as_str(), err.as_str(), close), ("hi\n", "oops\n", Some(1000)), "{offered:?}");
            match outcome(&c) {
                ExecOutcome::Exit(3) if c.protocol.status_is_json() => {}
                ExecOutcome::Error(m) if !c.protocol.status_is_json() => {
                    assert!(m.contains("non-zero exit code"), "{offered:?}: {m}")
                }
                other => panic!("{offered:?} ({}): {other:?} from {status:?}", c.protocol),
            }

            // Success: JSON protocols say so, text protocols say nothing.
            let mut c = ws_connect(fx.addr, &exec_path(MAIN, &["true"], &["stdout"]), offered, "old-ok").await?;
            c.finish().await?;
            assert_eq!(outcome(&c), ExecOutcome::Exit(0), "{offered:?}");
            assert_eq!(c.seen.error.is_empty(), !c.protocol.status_is_json());

            // stdin without CLOSE: the process reads what it needs.
            let path = exec_path(MAIN, &["head", "-c", "5"], &["stdin", "stdout"]);
            let mut c = ws_connect(fx.addr, &path, offered, "old-stdin").await?;
            c.stdin(b"hello world").await?;
            c.finish().await?;
            assert_eq!(c.seen_text().0, "hello", "{offered:?}");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_follows_resizes() -> TestResult {
    with_fixture(async |fx| {
        let path = exec_path(MAIN, &["sh"], &["stdin", "stdout", "tty"]);
        let mut c = ws_connect(fx.addr, &path, &[V5], "tty").await?;
        let has = |needle: &'static str| move |s: &Seen| String::from_utf8_lossy(&s.stdout).contains(needle);
        c.resize(100, 30).await?;
        c.stdin(b"stty size\n").await?;
        c.pump_until(has("30 100"), Duration::from_secs(20)).await?;
        c.resize(120, 40).await?;
        c.stdin(b"stty size; tty\n").await?;
        c.pump_until(has("40 120"), Duration::from_secs(20)).await?;
        c.pump_until(has("/dev/pts/"), Duration::from_secs(20)).await?;
        c.stdin(b"exit 5\n").await?;
        c.finish().await?;
        assert_eq!(outcome(&c), ExecOutcome::Exit(5));
        assert!(c.seen.stderr.is_empty());
        assert_eq!(c.seen.close_code, Some(1000));

        // The client's first size is the terminal's size from the start.
        let path = exec_path(MAIN, &["stty", "size"], &["stdin", "stdout", "tty"]);
        let mut c = ws_connect(fx.addr, &path, &[V5], "tty-initial").await?;
        c.resize(132, 43).await?;
        c.finish().await?;
        assert_eq!(c.seen_text().0, "43 132\r\n");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_while_the_process_is_quiet() -> TestResult {
    with_fixture(async |fx| {
        let path = exec_path(MAIN, &["sh", "-c", "sleep 3; echo done"], &["stdout"]);
        let mut c = ws_connect(fx.addr, &path, &[V5], "ping").await?;
        for i in 0..3u8 {
            let started = Instant::now();
            c.send_raw(Message::Ping(vec![b'p', i].into())).await?;
            c.pump_until(|s| s.pongs.iter().any(|p| p == &[b'p', i]), Duration::from_secs(2)).await?;
            assert!(started.elapsed() < Duration::from_secs(1));
        }
        c.finish().await?;
        assert_eq!(c.seen_text().0, "done\n");
        Ok(())
    })
    .await
}

/// A WebSocket upgrade by hand, for clients that misbehave below the message level.
async fn raw_ws(fx: &Fixture, argv: &[&str], audit: &str) -> Result<tokio::net::TcpStream, Error> {
    let path = exec_path(MAIN, argv, &["stdin", "stdout"]);
    let resp = raw_request(
        fx.addr,
        "GET",
        &path,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", V5),
            ("Hatch-Audit-Id", audit),
        ],
    )
    .await?;
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("sec-websocket-accept"), ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]);
    resp.stream.ok_or_else(|| err("no stream after 101"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_end_only_their_session() -> TestResult {
    with_fixture(async |fx| {
        // A well-behaved session runs alongside the hostile ones.
        let path = exec_path(MAIN, &["sh", "-c", "sleep 3; echo alive"], &["stdout"]);
        let mut good = ws_connect(fx.addr, &path, &[V5], "good").await?;

        // A CLOSE for a channel that does not exist.
        let audit = audit_id("bad-close");
        let argv = ["sh", "-c", "echo started; exec sleep 1000"];
        let path = exec_path(MAIN, &argv, &["stdin", "stdout"]);
        let mut c = ws_connect(fx.addr, &path, &[V5], &audit).await?;
        c.pump_until(|s| s.stdout.starts_with(b"started"), Duration::from_secs(20)).await?;
        c.send_raw(Message::Binary(vec![0xFF, 9].into())).await?;
        c.finish().await?;
        assert_eq!(c.seen.close_code, Some(1002));
        let s = fx.summary(&audit).await?;
        assert!(s.error.as_deref().is_some_and(|e| e.contains("protocol error")), "{s:?}");
        assert!(s.exit_code.is_some_and(|c| c > 128), "process not hung up: {s:?}");

        // Bytes that are not WebSocket frames at all.
        let audit = audit_id("garbage");
        let mut raw = raw_ws(fx, &argv, &audit).await?;
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        assert!(closed_within(&mut raw, Duration::from_secs(10)).await, "garbage did not end the session");
        let s = fx.summary(&audit).await?;
        assert!(s.error.as_deref().is_some_and(|e| e.contains("protocol error")), "{s:?}");

        // A frame announcing 64 MiB: refused from its header, nothing buffered.
        let audit = audit_id("huge");
        let mut raw = raw_ws(fx, &argv, &audit).await?;
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(64u64 << 20).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        raw.write_all(&header).await?;
        raw.write_all(&[0u8; 4096]).await?;
        assert!(closed_within(&mut raw, Duration::from_secs(10)).await, "oversized frame did not end the session");
        let s = fx.summary(&audit).await?;
        assert!(s.error.as_deref().is_some_and(|e| e.contains("protocol error")), "{s:?}");

        // The server still serves, and the good session was not disturbed.
        good.finish().await?;
        assert_eq!(good.seen_text().0, "alive\n");
        assert_eq!(outcome(&good), ExecOutcome::Exit(0));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_hangs_up_its_process() -> TestResult {
    with_fixture(async |fx| {
        let audit = audit_id("vanish");
        let argv = ["sh", "-c", "echo $$ > /tmp/vanish.pid; echo started; exec sleep 1000"];
        let mut c = ws_connect(fx.addr, &exec_path(MAIN, &argv, &["stdin", "stdout", "tty"]), &[V5], &audit).await?;
        c.pump_until(|s| String::from_utf8_lossy(&s.stdout).contains("started"), Duration::from_secs(20)).await?;
        c.vanish().await;
        let s = fx.summary(&audit).await?;
        assert!(s.error.as_deref().is_some_and(|e| e.contains("went away")), "{s:?}");
        assert!(s.exit_code.is_some_and(|c| c > 128), "process not hung up: {s:?}");

        let check = ["sh", "-c", "kill -0 $(cat /tmp/vanish.pid) 2>/dev/null && echo alive || echo gone"];
        let mut c = ws_connect(fx.addr, &exec_path(MAIN, &check, &["stdout"]), &[V5], "check").await?;
        c.finish().await?;
        assert_eq!(c.seen_text().0, "gone\n");

        // A client that closes the WebSocket in order while the process runs: the same, and its
        // close frame is answered.
        let audit = audit_id("close-early");
        let mut c = ws_connect(fx.addr, &exec_path(MAIN, &argv, &["stdout"]), &[V5], &audit).await?;
        c.pump_until(|s| s.stdout.starts_with(b"started"), Duration::from_secs(20)).await?;
        c.send_raw(Message::Close(None)).await?;
        c.finish().await?;
        assert_eq!(c.seen.close_code, Some(1005));
        let s = fx.summary(&audit).await?;
        assert!(s.error.as_deref().is_some_and(|e| e.contains("closed the session")), "{s:?}");
        assert!(s.exit_code.is_some_and(|c| c > 128), "process not hung up: {s:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_before_the_upgrade() -> TestResult {
    with_fixture(async |fx| {
        let ws = [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", V5),
        ];
        let ls = |container: &str| exec_path(container, &["ls"], &["stdout"]);
        // (path, method, headers, status code, message)
        type Case<'a> = (String, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
        let cases: Vec<Case> = vec![
            ("/version".into(), "GET", ws.to_vec(), 404, "NotFound"),
            (
                format!("/exec/{NS}/nope/main?command=ls&stdout=true"),
                "GET",
                ws.to_vec(),
                404,
                r#"pods "nope" not found"#,
            ),
            (ls("nope"), "GET", ws.to_vec(), 400, "container nope is not valid for pod web"),
            (ls(IDLE), "GET", ws.to_vec(), 400, "is not running"),
            (ls(MAIN), "GET", vec![], 400, "Upgrade request required"),
            (ls(MAIN), "POST", vec![("Connection", "Upgrade"), ("Upgrade", "h2c")], 400, "Upgrade request required"),
            (exec_path(MAIN, &["ls"], &[]), "GET", ws.to_vec(), 400, "at least 1 of stdin, stdout, stderr"),
            (exec_path(MAIN, &["ls"], &["stdout=maybe"]), "GET", ws.to_vec(), 400, "stdout"),
            (exec_path(MAIN, &[], &["stdout"]), "GET", ws.to_vec(), 400, "command"),
            (
                ls(MAIN),
                "GET",
                [&ws[..4], &[("Sec-WebSocket-Protocol", "v3.channel.k8s.io")]].concat(),
                400,
                "not supported",
            ),
            (
                ls(MAIN),
                "POST",
                vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
                400,
                "X-Stream-Protocol-Version",
            ),
        ];
        for (path, method, headers, code, message) in cases {
            let started = Instant::now();
            let resp = raw_request(fx.addr, method, &path, &headers).await?;
            assert!(started.elapsed() < Duration::from_secs(2), "{path}: slow refusal");
            assert_eq!(resp.status, code, "{path}: {}", String::from_utf8_lossy(&resp.body));
            let status = resp.status_json()?;
            assert_eq!(
                (&status["kind"], &status["apiVersion"], &status["status"]),
                (&"Status".into(), &"v1".into(), &"Failure".into())
            );
            assert_eq!(status["code"], code);
            let text =
                format!("{} {}", status["message"].as_str().unwrap_or(""), status["reason"].as_str().unwrap_or(""));
            assert!(text.contains(message), "{path}: {status}");
        }

        // SPDY with nothing in common: 403 listing what the kubelet speaks.
        let headers =
            [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v9.channel.k8s.io")];
        let resp = raw_request(fx.addr, "POST", &ls(MAIN), &headers).await?;
        assert_eq!(resp.status, 403);
        let accepted = resp.header("x-accepted-stream-protocol-versions");
        assert_eq!(accepted, ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]);

        // Refusals are reported too.
        let audit = audit_id("refused");
        let headers = [&ws[..], &[("Hatch-Audit-Id", audit.as_str())]].concat();
        let resp = raw_request(fx.addr, "GET", &ls(IDLE), &headers).await?;
        assert_eq!(resp.status, 400);
        let s = fx.summary(&audit).await?;
        assert_eq!((s.container.as_str(), s.exit_code), (IDLE, None));
        assert!(s.error.as_deref().is_some_and(|e| e.contains("is not running")));
        Ok(())
    })
    .await
}

/// kubectl 1.29 gives up after 16 s without a pong; an idle interactive session must stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_interactive_session_survives_minutes() -> TestResult {
    let idle = std::env::var("HATCH_K8S_IDLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(185u64);
    with_fixture(async |fx| {
        let path = exec_path(MAIN, &["sh"], &["stdin", "stdout", "tty"]);
        let mut c = ws_connect(fx.addr, &path, &[V5], "idle").await?;
        c.resize(80, 24).await?;
        let started = Instant::now();
        let mut i = 0u32;
        while started.elapsed() < Duration::from_secs(idle) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let payload = i.to_be_bytes().to_vec();
            c.send_raw(Message::Ping(payload.clone().into())).await?;
            c.pump_until(|s| s.pongs.contains(&payload), Duration::from_secs(5)).await?;
            i += 1;
        }
        c.stdin(b"echo still-$((40+2))\n").await?;
        c.pump_until(|s| String::from_utf8_lossy(&s.stdout).contains("still-42"), Duration::from_secs(10)).await?;
        c.stdin(b"exit\n").await?;
        c.finish().await?;
        assert_eq!(outcome(&c), ExecOutcome::Exit(0));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hatch_extensions_user_env_workdir_detach() -> TestResult {
    with_fixture(async |fx| {
        let argv = ["sh", "-c", "echo $(id -un) $FOO $(pwd)"];
        let flags = ["stdout", "user=alice", "env=FOO%3Dbar", "workdir=%2Ftmp"];
        let mut c = ws_connect(fx.addr, &exec_path(MAIN, &argv, &flags), &[V5], "ext").await?;
        c.finish().await?;
        assert_eq!(c.seen_text().0, "alice bar /tmp\n");

        // Detached: the answer comes at once, the process runs on.
        let argv = ["sh", "-c", "sleep 3; echo later > /tmp/d.tmp; mv /tmp/d.tmp /tmp/detached"];
        let started = Instant::now();
        let mut c = ws_connect(fx.addr, &exec_path(MAIN, &argv, &["detach"]), &[V5], "detach").await?;
        c.finish().await?;
        assert_eq!(outcome(&c), ExecOutcome::Exit(0));
        assert!(started.elapsed() < Duration::from_millis(2500), "waited for a detached process");
        let argv =
            ["sh", "-c", "for i in $(seq 100); do test -e /tmp/detached && break; sleep 0.1; done; cat /tmp/detached"];
        let mut c = ws_connect(fx.addr, &exec_path(MAIN, &argv, &["stdout"]), &[V5], "detached-check").await?;
        c.finish().await?;
        assert_eq!(c.seen_text().0, "later\n");
        Ok(())
    })
    .await
}
