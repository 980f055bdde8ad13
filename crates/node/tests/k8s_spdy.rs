//! The k8s streaming server over SPDY/3.1, against a real engine and container, with a small
//! client on `hatch_wire::spdy` that opens its streams the way kubectl does.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hatch_wire::spdy::{self, Codec, Frame, GoAwayStatus, Headers, StreamType};
use hatch_wire::status::ExecOutcome;
use sha2::Digest;

/// What kubectl 1.29+ offers (1.27 starts at v4).
const KUBECTL: [&str; 5] =
    ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

async fn connect(fx: &Fixture, path: &str, offered: &[&str], audit: &str) -> Result<SpdyClient, Error> {
    match SpdyClient::connect(fx.addr, path, offered, audit).await? {
        Ok(c) => Ok(c),
        Err(resp) => Err(err(format!("refused: {} {}", resp.status, String::from_utf8_lossy(&resp.body)))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_offer_is_served_as_v4_with_separate_streams_and_exit_code() -> TestResult {
    with_fixture(async |fx| {
        let audit = audit_id("spdy-exit");
        let path = exec_path(MAIN, &["sh", "-c", "echo out; echo err >&2; exit 3"], &["stdout", "stderr"]);
        let mut c = connect(fx, &path, &KUBECTL, &audit).await?;
        assert_eq!(c.protocol, "v4.channel.k8s.io");
        c.open(&[StreamType::Error, StreamType::Stdout, StreamType::Stderr]).await?;
        c.finish().await?;
        assert_eq!(c.seen.stdout, b"out\n");
        assert_eq!(c.seen.stderr, b"err\n");
        assert_eq!(c.outcome(), ExecOutcome::Exit(3));
        assert_eq!(c.seen.goaway, Some(GoAwayStatus::OK));
        let s = fx.summary(&audit).await?;
        assert_eq!((s.exit_code, s.bytes_out, s.error), (Some(3), 8, None));

        let mut c = connect(fx, &exec_path(MAIN, &["true"], &["stdout"]), &KUBECTL, "ok").await?;
        c.open(&[StreamType::Error, StreamType::Stdout]).await?;
        c.finish().await?;
        assert_eq!(c.seen.error, br#"{"metadata":{},"status":"Success"}"#);

        let mut c = connect(fx, &exec_path(MAIN, &["nope"], &["stdout", "stderr"]), &KUBECTL, "127").await?;
        c.open(&[StreamType::Error, StreamType::Stdout, StreamType::Stderr]).await?;
        c.finish().await?;
        assert_eq!(c.outcome(), ExecOutcome::Exit(127));
        assert!(String::from_utf8_lossy(&c.seen.stderr).contains("not found"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_on_stdin_is_eof_and_10_mib_arrive_intact() -> TestResult {
    with_fixture(async |fx| {
        let mut data = vec![0u8; 10 << 20];
        rand::fill(&mut data[..]);
        let expected = hex::encode(sha2::Sha256::digest(&data));
        let audit = audit_id("spdy-sha");
        let path = exec_path(MAIN, &["sha256sum"], &["stdin", "stdout", "stderr"]);
        let mut c = connect(fx, &path, &KUBECTL, &audit).await?;
        c.open(&[StreamType::Error, StreamType::Stdin, StreamType::Stdout, StreamType::Stderr]).await?;
        c.stdin(&data).await?;
        c.stdin_fin().await?;
        c.finish().await?;
        assert_eq!(String::from_utf8_lossy(&c.seen.stdout), format!("{expected}  -\n"));
        assert_eq!(c.outcome(), ExecOutcome::Exit(0));
        assert_eq!(fx.summary(&audit).await?.bytes_in, 10 << 20);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_follows_resizes() -> TestResult {
    with_fixture(async |fx| {
        let path = exec_path(MAIN, &["sh"], &["stdin", "stdout", "tty"]);
        let mut c = connect(fx, &path, &KUBECTL, "tty").await?;
        c.open(&[StreamType::Error, StreamType::Stdin, StreamType::Stdout, StreamType::Resize]).await?;
        let has = |needle: &'static str| move |s: &SpdySeen| String::from_utf8_lossy(&s.stdout).contains(needle);
        c.resize(100, 30).await?;
        c.stdin(b"stty size\n").await?;
        c.pump_until(has("30 100"), Duration::from_secs(20)).await?;
        c.resize(120, 40).await?;
        c.stdin(b"stty size\n").await?;
        c.pump_until(has("40 120"), Duration::from_secs(20)).await?;
        c.stdin(b"exit 4\n").await?;
        c.finish().await?;
        assert_eq!(c.outcome(), ExecOutcome::Exit(4));

        // The client's first size is the terminal's size from the start.
        let path = exec_path(MAIN, &["stty", "size"], &["stdin", "stdout", "tty"]);
        let mut c = connect(fx, &path, &KUBECTL, "tty-initial").await?;
        c.open(&[StreamType::Error, StreamType::Stdin, StreamType::Stdout, StreamType::Resize]).await?;
        c.resize(132, 43).await?;
        c.finish().await?;
        assert_eq!(c.seen.stdout, b"43 132\r\n");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_clients_pings_are_echoed() -> TestResult {
    with_fixture(async |fx| {
        let path = exec_path(MAIN, &["sh", "-c", "sleep 2; echo done"], &["stdout"]);
        let mut c = connect(fx, &path, &KUBECTL, "ping").await?;
        // A ping before the streams exist is answered too.
        c.ping(1).await?;
        c.pump_until(|s| s.pings.contains(&1), Duration::from_secs(2)).await?;
        c.open(&[StreamType::Error, StreamType::Stdout]).await?;
        // An even id would be the server's own ping coming back: never echoed.
        c.ping(2).await?;
        let started = Instant::now();
        c.ping(3).await?;
        c.pump_until(|s| s.pings.contains(&3), Duration::from_secs(2)).await?;
        assert!(started.elapsed() < Duration::from_secs(1));
        c.finish().await?;
        assert_eq!(c.seen.pings, [1, 3]);
        assert_eq!(c.seen.stdout, b"done\n");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_status_on_v1_to_v3() -> TestResult {
    with_fixture(async |fx| {
        for offered in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
            let path = exec_path(MAIN, &["sh", "-c", "cat; echo bye; exit 3"], &["stdin", "stdout", "stderr"]);
            let mut c = connect(fx, &path, &[offered], "text").await?;
            assert_eq!(c.protocol, offered);
            c.open(&[StreamType::Error, StreamType::Stdin, StreamType::Stdout, StreamType::Stderr]).await?;
            let stdin = c.id(StreamType::Stdin).ok_or_else(|| err("no stdin"))?;
            if offered == "channel.k8s.io" {
                // v1: the server ends its half of stdin right away; the client never half-closes.
                c.pump_until(|s| s.fins.contains(&stdin), Duration::from_secs(10)).await?;
            }
            c.stdin(b"hi\n").await?;
            c.stdin_fin().await?;
            c.finish().await?;
            assert_eq!(c.seen.stdout, b"hi\nbye\n", "{offered}");
            let text = String::from_utf8_lossy(&c.seen.error);
            assert!(text.starts_with("command terminated with non-zero exit code"), "{offered}: {text}");
            assert_eq!(c.outcome().exit_code(), 1);

            let mut c = connect(fx, &exec_path(MAIN, &["true"], &["stdout"]), &[offered], "text-ok").await?;
            c.open(&[StreamType::Error, StreamType::Stdout]).await?;
            c.finish().await?;
            assert!(c.seen.error.is_empty(), "{offered}: success is silent on text protocols");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_end_only_their_session() -> TestResult {
    with_fixture(async |fx| {
        let path = exec_path(MAIN, &["sh", "-c", "sleep 3; echo alive"], &["stdout"]);
        let mut good = connect(fx, &path, &KUBECTL, "good").await?;
        good.open(&[StreamType::Error, StreamType::Stdout]).await?;

        let argv = ["sh", "-c", "echo started; exec sleep 1000"];
        let path = exec_path(MAIN, &argv, &["stdin", "stdout"]);
        let running = async |audit: &str| -> Result<SpdyClient, Error> {
            let mut c = connect(fx, &path, &KUBECTL, audit).await?;
            c.open(&[StreamType::Error, StreamType::Stdin, StreamType::Stdout]).await?;
            c.pump_until(|s| s.stdout.starts_with(b"started"), Duration::from_secs(20)).await?;
            Ok(c)
        };
        let spdy2_frame = [0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1];
        let mut huge_data = Vec::new();
        huge_data.extend_from_slice(&1u32.to_be_bytes());
        huge_data.extend_from_slice(&[0x00, 0xFF, 0xFF, 0xFF]);
        let mut even_syn = Vec::new();
        Codec::new()?.encode(
            &Frame::SynStream {
                stream_id: 100,
                associated_stream_id: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new().with("streamtype", "stdin"),
            },
            &mut even_syn,
        )?;

        for (name, bytes) in
            [("spdy/2 frame", &spdy2_frame[..]), ("16 MiB frame", &huge_data), ("even stream id", &even_syn)]
        {
            let audit = audit_id("hostile");
            let mut c = running(&audit).await?;
            c.write(bytes).await?;
            c.pump_until(|s| s.ended, Duration::from_secs(10)).await?;
            assert_eq!(c.seen.goaway, Some(GoAwayStatus::PROTOCOL_ERROR), "{name}");
            let s = fx.summary(&audit).await?;
            assert!(s.error.as_deref().is_some_and(|e| e.contains("protocol error")), "{name}: {s:?}");
            assert!(s.exit_code.is_some_and(|c| c > 128), "{name}: process not hung up: {s:?}");
        }

        // Garbage before any stream: nothing ran, the connection just ends.
        let audit = audit_id("garbage");
        let mut c = connect(fx, &path, &KUBECTL, &audit).await?;
        c.write(b"\x80\x03\x00\x01\xff\xff\xff\xffgarbage").await?;
        c.pump_until(|s| s.ended, Duration::from_secs(10)).await?;
        let s = fx.summary(&audit).await?;
        assert!(s.error.as_deref().is_some_and(|e| e.contains("protocol error")), "{s:?}");
        assert_eq!(s.exit_code, None);

        good.finish().await?;
        assert_eq!(good.seen.stdout, b"alive\n");
        assert_eq!(good.outcome(), ExecOutcome::Exit(0));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_hangs_up_its_process() -> TestResult {
    with_fixture(async |fx| {
        let audit = audit_id("spdy-vanish");
        let argv = ["sh", "-c", "echo $$ > /tmp/spdy.pid; echo started; exec sleep 1000"];
        let path = exec_path(MAIN, &argv, &["stdin", "stdout", "stderr"]);
        let mut c = connect(fx, &path, &KUBECTL, &audit).await?;
        c.open(&[StreamType::Error, StreamType::Stdin, StreamType::Stdout, StreamType::Stderr]).await?;
        c.pump_until(|s| s.stdout.starts_with(b"started"), Duration::from_secs(20)).await?;
        drop(c);
        let s = fx.summary(&audit).await?;
        assert!(s.error.as_deref().is_some_and(|e| e.contains("went away")), "{s:?}");
        assert!(s.exit_code.is_some_and(|c| c > 128), "process not hung up: {s:?}");

        let check = ["sh", "-c", "kill -0 $(cat /tmp/spdy.pid) 2>/dev/null && echo alive || echo gone"];
        let mut c = connect(fx, &exec_path(MAIN, &check, &["stdout"]), &KUBECTL, "check").await?;
        c.open(&[StreamType::Error, StreamType::Stdout]).await?;
        c.finish().await?;
        assert_eq!(c.seen.stdout, b"gone\n");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_streams_time_out_without_running_anything() -> TestResult {
    with_fixture(async |fx| {
        let audit = audit_id("timeout");
        let argv = ["sh", "-c", "echo ran > /tmp/ran"];
        let mut c = connect(fx, &exec_path(MAIN, &argv, &["stdout", "stderr"]), &KUBECTL, &audit).await?;
        // stderr is expected but never opened.
        c.open(&[StreamType::Error, StreamType::Stdout]).await?;
        c.pump_until(|s| s.ended, Duration::from_secs(45)).await?;
        let s = fx.summary(&audit).await?;
        assert!(s.error.as_deref().is_some_and(|e| e.contains("timed out")), "{s:?}");
        assert_eq!(s.exit_code, None);

        let check = ["sh", "-c", "test -e /tmp/ran && echo ran || echo never"];
        let mut c = connect(fx, &exec_path(MAIN, &check, &["stdout"]), &KUBECTL, "check").await?;
        c.open(&[StreamType::Error, StreamType::Stdout]).await?;
        c.finish().await?;
        assert_eq!(c.seen.stdout, b"never\n");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_window_updates_are_ignored() -> TestResult {
    with_fixture(async |fx| {
        let path = exec_path(MAIN, &["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"], &["stdout"]);
        let mut c = connect(fx, &path, &KUBECTL, "noise").await?;
        let mut noise = Vec::new();
        spdy::encode_settings(false, &[spdy::Setting { flags: 0, id: 7, value: 1024 }], &mut noise)?;
        spdy::encode_window_update(0, 1, &mut noise)?;
        c.write(&noise).await?;
        c.open(&[StreamType::Error, StreamType::Stdout]).await?;
        c.finish().await?;
        // 300 000 bytes although the client's "window" is 1 KiB: no flow control is enforced.
        assert_eq!(c.seen.stdout.len(), 300_000);
        assert_eq!(c.outcome(), ExecOutcome::Exit(0));
        Ok(())
    })
    .await
}

fn open_fds() -> Result<usize, Error> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Sessions that end every way (normally, vanished, broken) leave no descriptor behind: sockets,
/// pipes, terminals and init connections are all released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_leave_no_descriptors_behind() -> TestResult {
    with_fixture(async |fx| {
        let argv = ["sh", "-c", "echo started; exec sleep 1000"];
        let streams = [StreamType::Error, StreamType::Stdin, StreamType::Stdout];
        let round = async |i: u32| -> TestResult {
            // Normal, over both transports.
            let mut c = connect(fx, &exec_path(MAIN, &["echo", "hi"], &["stdout"]), &KUBECTL, "n").await?;
            c.open(&[StreamType::Error, StreamType::Stdout]).await?;
            c.finish().await?;
            let path = exec_path(MAIN, &["sh"], &["stdin", "stdout", "tty"]);
            let mut w = ws_connect(fx.addr, &path, &["v5.channel.k8s.io"], "n").await?;
            w.stdin(b"exit 0\n").await?;
            w.finish().await?;
            // Vanished, over both transports.
            let audit = format!("leak-spdy-{i}");
            let mut c = connect(fx, &exec_path(MAIN, &argv, &["stdin", "stdout"]), &KUBECTL, &audit).await?;
            c.open(&streams).await?;
            c.pump_until(|s| s.stdout.starts_with(b"started"), Duration::from_secs(20)).await?;
            drop(c);
            fx.summary(&audit).await?;
            let audit = format!("leak-ws-{i}");
            let path = exec_path(MAIN, &argv, &["stdin", "stdout", "tty"]);
            let mut w = ws_connect(fx.addr, &path, &["v5.channel.k8s.io"], &audit).await?;
            w.pump_until(|s| s.stdout.starts_with(b"started"), Duration::from_secs(20)).await?;
            w.vanish().await;
            fx.summary(&audit).await?;
            // Broken.
            let audit = format!("leak-bad-{i}");
            let mut c = connect(fx, &exec_path(MAIN, &argv, &["stdin", "stdout"]), &KUBECTL, &audit).await?;
            c.open(&streams).await?;
            c.pump_until(|s| s.stdout.starts_with(b"started"), Duration::from_secs(20)).await?;
            c.write(&[0x80, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]).await?;
            c.pump_until(|s| s.ended, Duration::from_secs(10)).await?;
            fx.summary(&audit).await?;
            Ok(())
        };
        round(0).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = open_fds()?;
        for i in 1..=5 {
            round(i).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = open_fds()?;
        eprintln!("open descriptors: {before} before 5 rounds, {after} after");
        assert!(after <= before + 2, "descriptors grew from {before} to {after} over 5 rounds");
        Ok(())
    })
    .await
}
