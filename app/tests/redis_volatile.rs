//! A `redis://` log refuses a Redis that keeps nothing on disk (a restart would lose every
//! record not yet consumed, unnoticed) unless its URL says `volatile=ok`.
//!
//! Needs Redis: `RIDES_TEST_REDIS_URL` (set by `scripts/test.sh`). The rust-svc machines' Redis
//! persists nothing; on a Redis that does, the refusal cannot happen and the test checks that
//! the log opens without the option.
#![cfg(feature = "redis")]

#[tokio::test]
async fn a_redis_log_without_persistence_is_refused_unless_the_url_accepts_it() {
    let base = std::env::var("RIDES_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("this test needs Redis: set RIDES_TEST_REDIS_URL (scripts/test.sh sets it)")
    });
    let base = base.trim_end_matches('/');
    let stream = format!("rides_volatile_{}", uuid::Uuid::new_v4().simple());
    let stores = app::wiring::open_store("memory://").await.unwrap();

    let probe = adapters::redis::RedisLog::connect(base, &stream)
        .await
        .expect("connect to the test Redis");
    let persists = matches!(probe.persistence(), adapters::redis::Persistence::On { .. });

    let plain = app::wiring::open_log(&format!("{base}?stream={stream}"), &stores).await;
    if persists {
        assert!(plain.is_ok(), "a persisting Redis is accepted");
    } else {
        let err = format!("{:#}", plain.expect_err("a volatile Redis is refused"));
        assert!(
            err.contains("keeps nothing on disk") && err.contains("volatile=ok"),
            "{err}"
        );
    }
    let accepted =
        app::wiring::open_log(&format!("{base}?volatile=ok&stream={stream}"), &stores).await;
    assert!(accepted.is_ok(), "{:?}", accepted.err());
}
