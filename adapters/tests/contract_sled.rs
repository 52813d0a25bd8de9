//! Contract suites against the sled adapter: each scenario gets a log in its own temporary
//! directory, kept alive by the factory for the length of the test.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use adapters::sled::SledLog;
use ports::Log;
use ports::contract::{LogFactory, async_trait};
use tempfile::TempDir;

/// Opens sled logs in temporary directories, and reopens them as a restarted process would.
#[derive(Default)]
struct SledLogs {
    /// The directories handed out; deleted when the factory (the test) ends.
    dirs: Mutex<Vec<TempDir>>,
}

#[async_trait]
impl LogFactory for SledLogs {
    async fn fresh(&self) -> Arc<dyn Log> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let log = SledLog::open(dir.path().join("log")).expect("open a fresh sled log");
        self.dirs.lock().expect("dirs lock").push(dir);
        Arc::new(log)
    }

    async fn reopen(&self, log: Arc<dyn Log>) -> Option<Arc<dyn Log>> {
        let described = log.describe();
        let path = PathBuf::from(
            described
                .strip_prefix("sled://")
                .unwrap_or_else(|| panic!("describe() must start with sled://: {described}")),
        );
        assert_eq!(
            Arc::strong_count(&log),
            1,
            "reopen: the caller must have dropped every other clone (sled locks its directory)"
        );
        drop(log);
        // sled releases its directory lock from its background flusher shortly after the last
        // handle drops: a reopen in the same process retries for a while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let reopened = loop {
            match SledLog::open(&path) {
                Ok(log) => break log,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("reopen {}: {e}", path.display())
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        Some(Arc::new(reopened))
    }
}

ports::log_contract_tests!(SledLogs::default());
