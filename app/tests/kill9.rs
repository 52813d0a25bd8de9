//! The real binary, really killed: `rides serve` on SQLite + sled is sent SIGKILL in the middle
//! of a run with every fault on, started again on the same data directory, fed more rides, and
//! must end with every consumer equal to the store's truth (nothing lost, nothing counted
//! twice). Then SIGTERM must drain and stop it cleanly.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use app::simulator::{self, SimConfig, SimStats};
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

fn serve(dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rides"))
        .arg("serve")
        .args([
            "--store",
            &format!("sqlite://{}", dir.join("rides.db").display()),
        ])
        .args(["--log", &format!("sled://{}", dir.join("log").display())])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--double-send-rate", "0.1", "--consumer-crash-rate", "0.1"])
        .args(["--api-crash-rate", "0.1", "--seed", "5"])
        // Short key thresholds so the completer finishes crashed requests within the test.
        .args(["--lock-timeout-ms", "500", "--completer-grace-ms", "500"])
        .args(["--completer-last-run-ms", "250"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rides serve")
}

async fn get_json(url: &str) -> Option<serde_json::Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

async fn until_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_json(&format!("{base}/healthz")).await.is_none() {
        assert!(Instant::now() < deadline, "rides serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET /stats` until the verdict is settled and agrees, or the deadline passes.
async fn settled_verdict(base: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = get_json(&format!("{base}/stats")).await.unwrap_or_default();
        let settled = v["agree"] == true
            && v["truth"]["unfinished_keys"] == 0
            && v["staged"] == 0
            && v["consumers"]
                .as_array()
                .is_some_and(|cs| cs.iter().all(|c| c["lag"] == 0));
        if settled || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_with_sigkill_resumes_and_converges() {
    let dir = tempfile::tempdir().unwrap();

    // First life: rides arrive, then SIGKILL wherever the process is.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut first = serve(dir.path(), port);
    until_healthy(&base).await;
    let stats = Arc::new(SimStats::default());
    let stop = CancellationToken::new();
    let sim = tokio::spawn(simulator::simulate(
        SimConfig::new(base.clone(), 1_000, 4, 5),
        stats.clone(),
        stop.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(120), async {
        while stats.done.load(Ordering::Relaxed) < 150 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the simulator made progress");
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    stop.cancel();
    let _ = sim.await;

    // Second life on the same files: more rides, then agreement.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut second = serve(dir.path(), port);
    until_healthy(&base).await;
    let before = get_json(&format!("{base}/stats")).await.expect("stats");
    let report = simulator::simulate(
        SimConfig::new(base.clone(), 150, 4, 6),
        Arc::new(SimStats::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.rides, 150);
    let v = settled_verdict(&base).await;

    // SIGTERM drains and exits cleanly.
    let pid = second.id().to_string();
    let term = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("rides serve did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let table = serde_json::to_string_pretty(&v).unwrap();
    assert_eq!(
        v["agree"], true,
        "consumers disagree with the truth after SIGKILL:\n{table}"
    );
    let truth = &v["truth"];
    assert_eq!(truth["unfinished_keys"], 0, "{table}");
    for c in v["consumers"].as_array().unwrap() {
        assert_eq!(
            (&c["rides"], &c["distance_mm"]),
            (&truth["rides"], &truth["distance_mm"]),
            "{table}"
        );
    }
    let (b, t) = (
        before["truth"]["rides"].as_u64().unwrap(),
        truth["rides"].as_u64().unwrap(),
    );
    assert!(
        b >= 150,
        "the first life committed rides before the kill: {b}"
    );
    assert!(t >= b + 150, "rides from both lives are kept: {b} then {t}");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
