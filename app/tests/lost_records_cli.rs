//! Lost records on the command line, with the real binary on a SQLite store and a sled log at
//! rest: a consumer that reports a gap makes `rides log status` exit 3, shows in `rides
//! consumer list` and makes `rides verify` disagree; `rides log repair` reports what cannot be
//! rebuilt (exit 3) until `--acknowledge`, after which nothing is reported any more.

use std::process::{Command, Output};

use ports::{Cursor, Position, Save};

fn rides(args: &[&str], store: &str, log: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rides"))
        .args(args)
        .args(["--store", store, "--log", log])
        .env("RUST_LOG", "error")
        .output()
        .expect("run rides")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_gap_shows_everywhere_until_repaired_or_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("rides.db").display());
    let log = format!("sled://{}", dir.path().join("log").display());
    {
        let stores = app::wiring::open_store(&store).await.unwrap();
        // A distance consumer whose log lost sequences 1..=3 of this store, which the
        // store's published index has no trace of (so nothing can be rebuilt).
        let cursor = Cursor {
            kind: Some("distance".into()),
            gaps: vec![domain::Gap {
                producer: stores.outbox.producer(),
                lane: 0,
                from_seq: 1,
                to_seq: Some(3),
                detected_at_ms: 5,
            }],
            ..Cursor::default()
        };
        let state = serde_json::json!({"rides": 0, "distance_mm": 0});
        let start = Position::start();
        stores
            .consumers
            .save("distance-x", &Save::new(0, &start, &cursor, &state, 1))
            .await
            .unwrap();
    }
    // sled is opened by one process at a time: create the log directory first.
    drop(app::wiring::open_log(&log, &app::wiring::open_store(&store).await.unwrap()).await);

    let status = rides(&["log", "status"], &store, &log);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
    assert!(
        text(&status).contains("LOST RECORDS: consumer distance-x"),
        "{}",
        text(&status)
    );
    assert!(text(&status).contains("seq 1..=3"), "{}", text(&status));

    let listed = rides(&["consumer", "list"], &store, &log);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains("gaps=1"), "{}", text(&listed));
    assert!(text(&listed).contains("LOST RECORDS"), "{}", text(&listed));

    let verify = rides(&["verify"], &store, &log);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(
        text(&verify).contains("LOST RECORDS: distance-x"),
        "{}",
        text(&verify)
    );

    let repair = rides(&["log", "repair"], &store, &log);
    assert_eq!(repair.status.code(), Some(3), "{}", text(&repair));
    assert!(text(&repair).contains("UNRECOVERABLE"), "{}", text(&repair));
    let still = rides(&["log", "status"], &store, &log);
    assert_eq!(
        still.status.code(),
        Some(3),
        "a repair alone acknowledges nothing"
    );

    let ack = rides(&["log", "repair", "--acknowledge", "--json"], &store, &log);
    assert!(ack.status.success(), "{}", text(&ack));
    let report: serde_json::Value =
        serde_json::from_slice(&ack.stdout).expect("the report is JSON on stdout");
    assert_eq!(report["unrecoverable"], 3);
    assert_eq!(report["acknowledged"], true);
    let status = rides(&["log", "status"], &store, &log);
    assert!(status.status.success(), "{}", text(&status));
    let verify = rides(&["verify"], &store, &log);
    assert!(verify.status.success(), "{}", text(&verify));
}
