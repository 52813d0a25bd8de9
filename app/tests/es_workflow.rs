//! Durable workflows (app::es::workflow) on the runtime, ported from sourced's
//! DurableWorkflow cases: the happy path's event sequence, cached steps not invoked again,
//! retries then failure, same-argument calls run once, and a durable wait through the
//! housekeeper, and the context recorded across a failed attempt (memory and SQLite).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use adapters::memory::MemoryStore;
use adapters::sqlite::SqliteStore;
use app::es::Runtime;
use app::es::workflow::{Ctx, Halt, Workflow, step_key};
use domain::es::{Backoff, ErrorStrategy};
use ports::ReactorStore;
use serde_json::{Value, json};

fn patient() -> ErrorStrategy {
    ErrorStrategy::retry(100, 1, Backoff::Constant)
}

async fn kinds(store: &Arc<dyn ReactorStore>, stream: &str) -> Vec<String> {
    store
        .read_stream(stream, 0, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|m| m.message.kind().to_owned())
        .collect()
}

async fn settle(rt: &Runtime) {
    for _ in 0..50 {
        if rt.drain("w").await.unwrap_or_else(|e| panic!("{e}")) == 0 {
            return;
        }
    }
}

async fn greeting(store: Arc<dyn ReactorStore>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let wf = Workflow::new("greet", move |ctx: Ctx, args: Value| {
        let c = Arc::clone(&c);
        async move {
            let ip = ctx
                .step("get_ip", json!([]), 1, |_| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Ok(json!("11.111.111")) }
                })
                .await?;
            let place = ctx
                .step("geolocate", json!([ip]), 1, |_| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Ok(json!("London, UK")) }
                })
                .await?;
            Ok::<Value, Halt>(json!(format!(
                "Hello {}, your IP is {} and its location is {}",
                args["name"].as_str().unwrap_or_default(),
                ip.as_str().unwrap_or_default(),
                place.as_str().unwrap_or_default()
            )))
        }
    });
    let handle = wf
        .execute(store.as_ref(), json!({"name": "Joe"}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::new(Arc::clone(&store)).with_reactor_strategy(wf, patient());
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    settle(&rt).await;
    assert_eq!(
        kinds(&store, &handle.stream_id).await,
        vec![
            "greet.started",
            "greet.step_started",
            "greet.step_complete",
            "greet.step_started",
            "greet.step_complete",
            "greet.complete"
        ]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "each step invoked once");
    let out = handle
        .wait(store.as_ref(), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out,
        Some(Ok(json!(
            "Hello Joe, your IP is 11.111.111 and its location is London, UK"
        )))
    );
}

async fn retries_then_failure(store: Arc<dyn ReactorStore>) {
    let wf = Workflow::new("flaky", |ctx: Ctx, _args: Value| async move {
        ctx.step("net", json!([]), 2, |_| async {
            Err("Network Error!".to_owned())
        })
        .await?;
        Ok::<Value, Halt>(Value::Null)
    });
    let handle = wf
        .execute(store.as_ref(), json!({}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::new(Arc::clone(&store)).with_reactor_strategy(wf, patient());
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    settle(&rt).await;
    assert_eq!(
        kinds(&store, &handle.stream_id).await,
        vec![
            "flaky.started",
            "flaky.step_started",
            "flaky.step_failed",
            "flaky.step_started",
            "flaky.step_failed",
            "flaky.failed"
        ]
    );
    let out = handle
        .wait(store.as_ref(), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, Some(Err("Network Error!".to_owned())));
}

async fn same_args_once_and_durable_wait(store: Arc<dyn ReactorStore>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let wf = Workflow::new("double", move |ctx: Ctx, _args: Value| {
        let c = Arc::clone(&c);
        async move {
            let mut total = 0;
            for n in [2, 2, 4] {
                let c = Arc::clone(&c);
                let v = ctx
                    .step("double", json!([n]), 1, move |a| {
                        c.fetch_add(1, Ordering::SeqCst);
                        async move { Ok(json!(a[0].as_i64().unwrap_or(0) * 2)) }
                    })
                    .await?;
                total += v.as_i64().unwrap_or(0);
            }
            ctx.wait(100)?;
            Ok::<Value, Halt>(json!(total))
        }
    });
    let handle = wf
        .execute(store.as_ref(), json!({}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::new(Arc::clone(&store)).with_reactor_strategy(wf, patient());
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    settle(&rt).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "double(2) once, double(4) once"
    );
    let k = kinds(&store, &handle.stream_id).await;
    assert_eq!(k.last().map(String::as_str), Some("double.wait_started"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    settle(&rt).await;
    let k = kinds(&store, &handle.stream_id).await;
    assert_eq!(
        k[k.len() - 2..].to_vec(),
        vec!["double.wait_ended", "double.complete"]
    );
    let out = handle
        .wait(store.as_ref(), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, Some(Ok(json!(16))));
}

fn memory() -> Arc<dyn ReactorStore> {
    Arc::new(Arc::new(MemoryStore::default()).event_store())
}

async fn sqlite() -> (Arc<dyn ReactorStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}", dir.path().join("wf.db").display());
    let store = SqliteStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (Arc::new(store.event_store()), dir)
}

#[tokio::test]
async fn greeting_memory() {
    greeting(memory()).await;
}

#[tokio::test]
async fn greeting_sqlite() {
    let (s, _d) = sqlite().await;
    greeting(s).await;
}

#[tokio::test]
async fn retries_then_failure_memory() {
    retries_then_failure(memory()).await;
}

#[tokio::test]
async fn retries_then_failure_sqlite() {
    let (s, _d) = sqlite().await;
    retries_then_failure(s).await;
}

#[tokio::test]
async fn same_args_once_and_durable_wait_memory() {
    same_args_once_and_durable_wait(memory()).await;
}

#[tokio::test]
async fn same_args_once_and_durable_wait_sqlite() {
    let (s, _d) = sqlite().await;
    same_args_once_and_durable_wait(s).await;
}

/// Step keys are the same in every process (a fixed hash of name and canonical arguments).
#[test]
fn step_keys_are_deterministic() {
    assert_eq!(
        step_key("double", &json!([2])),
        step_key("double", &json!([2]))
    );
    assert_ne!(
        step_key("double", &json!([2])),
        step_key("double", &json!([4]))
    );
    assert_eq!(
        step_key("geo", &json!({"b": 1, "a": 2})),
        step_key("geo", &json!({"a": 2, "b": 1}))
    );
    assert_eq!(
        step_key("x", &json!([])),
        "x-4b763b52791e2b65",
        "pinned: the same key in every process and every build"
    );
}

/// sourced's context case: the context tracks progress (index, results), survives a failed
/// attempt, and the output is built from the steps: [2, 4, 6, 8, 10].
async fn context_is_recorded(store: Arc<dyn ReactorStore>) {
    let failures = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&failures);
    let wf = Workflow::new("ctx", move |ctx: Ctx, _args: Value| {
        let f = Arc::clone(&f);
        async move {
            let mut results = Vec::new();
            for n in 1..=5_i64 {
                let f = Arc::clone(&f);
                let v = ctx
                    .step("double", json!([n]), 2, move |_| async move {
                        // The third step fails once.
                        if n == 3 && f.fetch_add(1, Ordering::SeqCst) == 0 {
                            return Err("boom".to_owned());
                        }
                        Ok(json!(n * 2))
                    })
                    .await?;
                results.push(v);
                ctx.set_context(json!({"index": n, "results": results}))?;
            }
            Ok::<Value, Halt>(json!(results))
        }
    });
    let handle = wf
        .execute(store.as_ref(), json!({}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::new(Arc::clone(&store)).with_reactor_strategy(wf, patient());
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    settle(&rt).await;
    let stream = store
        .read_stream(&handle.stream_id, 0, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let failed_at = stream
        .iter()
        .position(|m| m.message.kind() == "ctx.step_failed")
        .unwrap_or_else(|| panic!("a failed attempt"));
    let context_before = stream[..failed_at]
        .iter()
        .rev()
        .find(|m| m.message.kind() == "ctx.context_updated")
        .map(|m| m.message.payload()["context"].clone());
    assert_eq!(context_before, Some(json!({"index": 2, "results": [2, 4]})));
    let out = handle
        .wait(store.as_ref(), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, Some(Ok(json!([2, 4, 6, 8, 10]))));
    assert_eq!(
        failures.load(Ordering::SeqCst),
        2,
        "the third step ran twice: failed once, then succeeded"
    );
}

#[tokio::test]
async fn context_is_recorded_memory() {
    context_is_recorded(memory()).await;
}

#[tokio::test]
async fn context_is_recorded_sqlite() {
    let (s, _d) = sqlite().await;
    context_is_recorded(s).await;
}
