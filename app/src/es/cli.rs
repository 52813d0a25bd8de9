//! `rides es …`: the background runtime's command line (run workers, list and control
//! consumer groups).

use std::sync::Arc;

use ports::{GroupStatus, ReactorStore};

use super::board::DispatchBoard;
use super::reactor::Projector;
use super::runtime::{Runtime, RuntimeConfig};
use crate::cli::{Common, EsCommand};
use crate::wiring;

/// The reactors `rides es work` runs: the dispatch board projector. (The dispatch actors
/// themselves run synchronously in the API's unit of work.)
pub fn runtime(store: Arc<dyn ReactorStore>, config: RuntimeConfig) -> Runtime {
    Runtime::new(store)
        .with_reactor(Projector::state_stored(DispatchBoard))
        .with_config(config)
}

fn when(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |t| format!("{t}"))
}

/// Runs `rides es …`.
///
/// # Errors
/// When the store cannot be opened or a group is unknown.
pub async fn run(common: &Common, what: EsCommand) -> anyhow::Result<i32> {
    if let EsCommand::Topology { format } = &what {
        let t = super::demo::topology();
        match format.as_str() {
            "json" => println!("{}", serde_json::to_string_pretty(&t)?),
            "mermaid" => print!("{}", t.to_mermaid()),
            other => anyhow::bail!("unknown topology format {other:?}: json or mermaid"),
        }
        return Ok(0);
    }
    if let EsCommand::Demo {
        rides,
        pilots,
        timeout_ms,
        seed,
        json,
    } = what
    {
        return demo(common, rides, pilots, timeout_ms, seed, json).await;
    }
    let stores = wiring::open_store(&common.store).await?;
    let store = stores.reactors;
    match what {
        EsCommand::Work { workers } => {
            let config = RuntimeConfig {
                workers: workers.max(1),
                ..RuntimeConfig::default()
            };
            let rt = Arc::new(runtime(Arc::clone(&store), config));
            let prefix = format!("{}", std::process::id());
            let handle = rt.spawn(&prefix).await?;
            tracing::info!(workers, store = %store.describe(), "es runtime running");
            println!(
                "es runtime: {workers} workers and a housekeeper on {}; Ctrl-C stops",
                store.describe()
            );
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            handle.abort();
            handle.join().await;
            Ok(0)
        }
        EsCommand::Groups { json } => {
            // Register the known groups first, so that a fresh store lists them.
            runtime(Arc::clone(&store), RuntimeConfig::default())
                .register()
                .await?;
            let groups = store.groups().await?;
            if json {
                println!("{}", serde_json::to_string(&groups)?);
                return Ok(0);
            }
            for g in &groups {
                let status = match g.status {
                    GroupStatus::Active => "active",
                    GroupStatus::Stopped => "stopped",
                };
                println!(
                    "{}  {status}{}  oldest {}  newest {}  streams {}  lag {}  retry_at {}",
                    g.group_id,
                    g.reason
                        .as_deref()
                        .map_or_else(String::new, |r| format!(" ({r})")),
                    g.oldest_processed,
                    g.newest_processed,
                    g.stream_count,
                    g.lag,
                    when(g.retry_at_ms)
                );
                for f in &g.failing {
                    println!(
                        "  {} {} after {} failure(s), retry at {}: {} (message {})",
                        f.stream_id,
                        if f.parked { "PARKED" } else { "backing off" },
                        f.retry_count,
                        when(f.retry_at_ms),
                        f.error.as_deref().unwrap_or("-"),
                        f.message_id
                            .map_or_else(|| "-".to_owned(), |m| m.to_string())
                    );
                }
            }
            Ok(0)
        }
        EsCommand::Stop { group, reason } => {
            store.stop_group(&group, &reason).await?;
            println!("{group} stopped");
            Ok(0)
        }
        EsCommand::Start { group } => {
            store.start_group(&group).await?;
            println!("{group} started");
            Ok(0)
        }
        EsCommand::Reset { group } => {
            store.reset_group(&group).await?;
            println!("{group} reset: every message is delivered again (replaying)");
            Ok(0)
        }
        EsCommand::Retry { group, stream } => {
            store.retry_stream(&group, &stream).await?;
            println!("{group}: {stream} resumed");
            Ok(0)
        }
        EsCommand::Demo { .. } | EsCommand::Topology { .. } => unreachable!("handled above"),
        EsCommand::Drain => {
            let rt = runtime(Arc::clone(&store), RuntimeConfig::default());
            rt.register().await?;
            let n = rt.drain(&format!("{}-drain", std::process::id())).await?;
            println!("{n} batches handled");
            Ok(0)
        }
    }
}

/// `rides es demo`: on the `--store` when it is Postgres, else on a fresh SQLite file.
async fn demo(
    common: &Common,
    rides: usize,
    pilots: usize,
    timeout_ms: i64,
    seed: u64,
    json: bool,
) -> anyhow::Result<i32> {
    let url = if common.store.starts_with("postgres") {
        common.store.clone()
    } else {
        let dir = std::env::temp_dir().join(format!(
            "rides-es-demo-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        format!("sqlite://{}", dir.join("es.db").display())
    };
    let stores = wiring::open_store(&url).await?;
    let config = super::demo::DemoConfig {
        rides,
        pilots,
        timeout_ms,
        seed,
        ..super::demo::DemoConfig::default()
    };
    println!(
        "es demo: {rides} rides, {pilots} pilots, timeout {timeout_ms} ms, workers killed every {:?}, on {}",
        config.kill_every,
        wiring::redact(&url)
    );
    let verdict = super::demo::run(stores.reactors, config).await?;
    if json {
        println!("{}", serde_json::to_string(&verdict)?);
    } else {
        println!("{verdict:#?}");
    }
    Ok(if verdict.agree { 0 } else { 1 })
}
