//! Connection options: what the app passes in, and how it becomes a pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::error::PgError;

/// How to connect to Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Run the embedded migrations on connect (default `true`).
    pub migrate: bool,
    /// Use `LISTEN`/`NOTIFY` for wake-ups (default `true`). `false` is the poll-only mode for
    /// poolers that break `LISTEN`, e.g. PgBouncer in transaction pooling mode: waits then
    /// re-check every 100 ms (wake-ups from this process stay immediate).
    pub listen: bool,
    /// The schema holding every table (default `None`: the server's `search_path`). Set with
    /// the `options` connection parameter (`-c search_path=...`) on every connection; a
    /// pooler that refuses that parameter needs the role's own `search_path` instead.
    pub schema: Option<String>,
    /// Pool size (default 10).
    pub max_connections: u32,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            migrate: true,
            listen: true,
            schema: None,
            max_connections: 10,
        }
    }
}

/// Parsed connection settings plus a password-free description.
pub(crate) struct Target {
    pub(crate) connect: PgConnectOptions,
    pub(crate) describe: String,
    /// The `NOTIFY` channel: `rides_outbox`, or `rides_outbox_<schema>` so that stores in
    /// different schemas of one database do not wake each other.
    pub(crate) channel: String,
}

/// Whether `s` is a plain identifier (`[A-Za-z_][A-Za-z0-9_]*`, at most 50 bytes so that the
/// channel name stays below Postgres' 63-byte identifier limit).
fn is_plain_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 50
}

impl Target {
    /// Parses `url` and applies `opts`. Errors never echo the URL (it may hold a password).
    pub(crate) fn new(url: &str, opts: &PgOptions) -> Result<Self, PgError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(PgError::Config(
                "invalid Postgres URL: it must start with postgres:// or postgresql://".to_owned(),
            ));
        }
        let mut connect = PgConnectOptions::from_str(url).map_err(|e| {
            PgError::Config(format!(
                "invalid Postgres URL (expected postgres://user[:password]@host[:port]/database): {}",
                redact(&e.to_string(), url)
            ))
        })?;
        let mut channel = "rides_outbox".to_owned();
        if let Some(schema) = &opts.schema {
            if !is_plain_identifier(schema) {
                return Err(PgError::Config(format!(
                    "invalid schema name {schema:?}: use letters, digits and '_' (at most 50)"
                )));
            }
            connect = connect.options([("search_path", schema.as_str())]);
            channel = format!("rides_outbox_{schema}");
        }
        connect = connect.application_name("rides");
        let mut describe = format!(
            "postgres://{}@{}:{}/{}",
            connect.get_username(),
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or_default()
        );
        if let Some(schema) = &opts.schema {
            describe.push_str(&format!("?schema={schema}"));
        }
        Ok(Self {
            connect,
            describe,
            channel,
        })
    }

    /// The main pool (connects lazily: the first query reports an unreachable server).
    pub(crate) fn pool(&self, opts: &PgOptions) -> PgPool {
        PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(self.connect.clone())
    }

    /// A one-connection pool for the `LISTEN` connection, so that it never takes a slot of
    /// the main pool.
    pub(crate) fn listener_pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(self.connect.clone())
    }
}

/// Removes `url` (and with it any password) from an error message, just in case.
pub(crate) fn redact(message: &str, url: &str) -> String {
    if url.is_empty() {
        message.to_owned()
    } else {
        message.replace(url, "<url>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_hides_the_password() {
        let t = Target::new(
            "postgres://alice:s3cret@db.example:5433/rides",
            &PgOptions {
                schema: Some("s1".into()),
                ..PgOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            t.describe,
            "postgres://alice@db.example:5433/rides?schema=s1"
        );
        assert_eq!(t.channel, "rides_outbox_s1");
    }

    #[test]
    fn bad_urls_and_schemas_are_clear_errors() {
        for bad in ["mysql://x:pw@h/db", "postgres://x:pw@h:notaport/db"] {
            let e = Target::new(bad, &PgOptions::default()).err().unwrap();
            assert!(e.to_string().starts_with("invalid Postgres URL"), "{e}");
            assert!(!e.to_string().contains("pw"), "{e}");
        }
        let e = Target::new(
            "postgres://h/db",
            &PgOptions {
                schema: Some("a; DROP TABLE x".into()),
                ..PgOptions::default()
            },
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("invalid schema name"), "{e}");
    }
}
