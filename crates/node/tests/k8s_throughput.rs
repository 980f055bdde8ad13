//! Large non-TTY stdout through the streaming server, WebSocket v5 and SPDY, with this crate's
//! own clients. Prints MB/s; fails only on a pathological rate (or lost bytes). Set
//! `HATCH_K8S_THROUGHPUT_MIB` for a longer run (default 256 MiB).

mod common;

use std::time::{Duration, Instant};

use common::*;
use hatch_wire::spdy::StreamType;
use hatch_wire::status::ExecOutcome;

/// Far below what either transport does even in a debug build: catches stalls, not regressions.
const FLOOR_MB_S: f64 = 5.0;

fn mib() -> u64 {
    std::env::var("HATCH_K8S_THROUGHPUT_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_stdout_over_websocket_and_spdy() -> TestResult {
    let mib = mib();
    let bytes = mib << 20;
    // busybox `head -c` writes 2 KiB at a time and tops out near 100 MB/s by itself; dd with big
    // blocks does not limit the measurement.
    let count = format!("count={}", mib * 4);
    let argv = ["dd", "if=/dev/zero", "bs=256k", count.as_str()];
    with_fixture(async |fx| {
        let path = exec_path(MAIN, &argv, &["stdout"]);

        let started = Instant::now();
        let mut c = ws_connect(fx.addr, &path, &["v5.channel.k8s.io"], "tp-ws").await?;
        c.seen.discard_stdout = true;
        c.pump_until(|s| s.ended, Duration::from_secs(600)).await?;
        let ws_secs = started.elapsed().as_secs_f64();
        assert_eq!(c.seen.stdout_len, bytes);
        assert_eq!(ExecOutcome::from_error_stream(&c.seen.error, true), ExecOutcome::Exit(0));

        let started = Instant::now();
        let mut c = match SpdyClient::connect(fx.addr, &path, &["v4.channel.k8s.io"], "tp-spdy").await? {
            Ok(c) => c,
            Err(resp) => return Err(err(format!("spdy refused: {}", resp.status))),
        };
        c.seen.discard_stdout = true;
        c.open(&[StreamType::Error, StreamType::Stdout]).await?;
        c.finish().await?;
        let spdy_secs = started.elapsed().as_secs_f64();
        assert_eq!(c.seen.stdout_len, bytes);
        assert_eq!(c.outcome(), ExecOutcome::Exit(0));

        let rate = |secs: f64| bytes as f64 / 1e6 / secs;
        eprintln!(
            "throughput, {mib} MiB of stdout: websocket v5 {:.0} MB/s, spdy {:.0} MB/s ({} build)",
            rate(ws_secs),
            rate(spdy_secs),
            if cfg!(debug_assertions) { "debug" } else { "release" }
        );
        assert!(rate(ws_secs) > FLOOR_MB_S && rate(spdy_secs) > FLOOR_MB_S);
        Ok(())
    })
    .await
}
