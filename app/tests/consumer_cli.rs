//! `rides consumer list|parked|retry-parked|remove` on a SQLite store at rest, with the real
//! binary: what the runtime parked is listed, delivered again (and counted) by
//! `retry-parked`, refused while another instance holds the consumer's lease, and a removed
//! consumer is gone.

use std::process::{Command, Output};

use domain::NewRecord;
use ports::{Clock, Cursor, Position, Save, SystemClock, ToPark};

fn rides(args: &[&str], store: &str, log: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rides"))
        .args(["consumer"])
        .args(args)
        .args(["--store", store, "--log", log])
        .env("RUST_LOG", "error")
        .output()
        .expect("run rides consumer")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_records_are_listed_retried_and_a_removed_consumer_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("rides.db").display());
    let log = format!("sled://{}", dir.path().join("log").display());
    {
        let stores = app::wiring::open_store(&store).await.unwrap();
        // A distance consumer that parked two rides of one entity.
        let park: Vec<ToPark> = [1_u64, 2]
            .iter()
            .map(|seq| ToPark {
                lane: 0,
                record: NewRecord {
                    id: uuid::Uuid::new_v4(),
                    stream: "rides".into(),
                    key: "ride:7".into(),
                    kind: "ride.created".into(),
                    payload: serde_json::json!({"ride_id": 7, "user_id": 1, "distance_mm": 1_500}),
                    correlation_id: None,
                    causation_id: None,
                    recorded_at_ms: 0,
                }
                .sequenced("rides", *seq),
                error: "the handler refused it".into(),
            })
            .collect();
        let cursor = Cursor {
            kind: Some("distance".into()),
            ..Cursor::default()
        };
        let state = serde_json::json!({"rides": 0, "distance_mm": 0});
        let start = Position::start();
        let save = Save {
            park: &park,
            ..Save::new(0, &start, &cursor, &state, 1)
        };
        stores.consumers.save("distance-x", &save).await.unwrap();
    }
    // sled is opened by one process at a time: create the log directory first.
    drop(app::wiring::open_log(&log, &app::wiring::open_store(&store).await.unwrap()).await);

    let listed = rides(&["list"], &store, &log);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(
        text(&listed).contains("distance-x\tkind=distance"),
        "{}",
        text(&listed)
    );
    assert!(text(&listed).contains("parked=2"), "{}", text(&listed));

    let parked = rides(&["parked", "distance-x"], &store, &log);
    assert!(parked.status.success(), "{}", text(&parked));
    assert!(
        text(&parked).contains("the handler refused it"),
        "{}",
        text(&parked)
    );
    assert!(
        text(&parked).contains("2 parked record(s)"),
        "{}",
        text(&parked)
    );

    // Another instance holds the lease: retry-parked refuses.
    let stores = app::wiring::open_store(&store).await.unwrap();
    let now = SystemClock.now_ms();
    let lease = stores
        .consumers
        .acquire_lease("consumer:distance-x", "someone-else", 60_000, now)
        .await
        .unwrap()
        .unwrap();
    let refused = rides(&["retry-parked", "distance-x"], &store, &log);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("is running"), "{}", text(&refused));
    stores.consumers.release_lease(&lease).await.unwrap();

    let retried = rides(&["retry-parked", "distance-x"], &store, &log);
    assert!(retried.status.success(), "{}", text(&retried));
    assert!(
        text(&retried).contains("2 parked record(s) delivered, 0 still parked"),
        "{}",
        text(&retried)
    );
    let cp = stores.consumers.load("distance-x").await.unwrap().unwrap();
    let state = app::services::consumer::result(&cp).unwrap().unwrap();
    assert_eq!(
        (state.rides, state.distance_mm),
        (2, 3_000),
        "both delivered and counted"
    );
    assert!(
        stores
            .consumers
            .parked("distance-x")
            .await
            .unwrap()
            .is_empty()
    );

    let removed = rides(&["remove", "distance-x"], &store, &log);
    assert!(removed.status.success(), "{}", text(&removed));
    assert_eq!(stores.consumers.load("distance-x").await.unwrap(), None);
    let again = rides(&["remove", "distance-x"], &store, &log);
    assert!(
        !again.status.success(),
        "removing an unknown consumer is an error"
    );
}
