//! The config file through the real binary: file < environment < flags, `RIDES_CONFIG`,
//! `rides config show` with sources and redacted secrets, and one clear error naming the key
//! for a bad file.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `rides ARGS` with only `env` set (the caller's `RIDES_…` variables would blur the
/// precedence under test).
fn rides(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rides"));
    cmd.args(args).env_clear().current_dir(dir);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The `key = value  # source` line of `key`.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} (")))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{out}"))
}

const FILE: &str = r#"
store = "postgres://rides:hunter2@db.internal/rides?sslmode=require"
log = "redis://:redispass@localhost:6379/rides?volatile=ok"
lease_ttl_ms = 1111
linger_ms = 2222
max_attempts = 3
consumers = ["from-file"]
"#;

#[test]
fn file_then_environment_then_flags_with_sources_and_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rides.toml");
    std::fs::write(&path, FILE).unwrap();
    let p = path.to_str().unwrap();
    let out = rides(
        &["--config", p, "config", "show", "--linger-ms", "4444"],
        &[
            ("RIDES_LEASE_TTL_MS", "3333"),
            ("RIDES_LINGER_MS", "3333"),
            ("STRIPE_SECRET_KEY", "sk_live_supersecret"),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8(out.stdout).unwrap();

    // The file over the default.
    assert!(line(&shown, "max_attempts").starts_with("max_attempts = 3 "));
    assert!(line(&shown, "max_attempts").ends_with(&format!("# file {p}")));
    assert!(line(&shown, "consumers").starts_with("consumers = [\"from-file\"]"));
    // The environment over the file.
    let l = line(&shown, "lease_ttl_ms");
    assert!(
        l.starts_with("lease_ttl_ms = 3333") && l.ends_with("# env RIDES_LEASE_TTL_MS"),
        "{l}"
    );
    // The flag over both.
    let l = line(&shown, "linger_ms");
    assert!(
        l.starts_with("linger_ms = 4444") && l.ends_with("# flag"),
        "{l}"
    );
    // The default where nobody says anything.
    let l = line(&shown, "lock_timeout_ms");
    assert!(
        l.starts_with("lock_timeout_ms = 90000") && l.ends_with("# default"),
        "{l}"
    );
    // Secrets never printed.
    for secret in ["hunter2", "redispass", "supersecret"] {
        assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
    }
    assert!(
        line(&shown, "store").contains("postgres://rides:***@db.internal/rides?sslmode=require")
    );
    assert!(line(&shown, "log").contains("redis://:***@localhost:6379/rides?volatile=ok"));
    let l = line(&shown, "stripe_secret_key");
    assert!(
        l.contains("\"***\"") && l.ends_with("# env STRIPE_SECRET_KEY"),
        "{l}"
    );
    // What it prints is TOML (a starting point for a config file).
    let parsed: toml::Table = shown.parse().unwrap();
    assert_eq!(parsed["max_attempts"].as_integer(), Some(3));
}

#[test]
fn rides_config_names_the_file_and_flags_override_it_for_real_commands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conf.toml");
    std::fs::write(&path, "store = \"memory://\"\nlog = \"memory://\"\n").unwrap();
    let p = path.to_str().unwrap();
    // RIDES_CONFIG names the file.
    let out = rides(&["config", "show"], &[("RIDES_CONFIG", p)], dir.path());
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        line(&shown, "store").starts_with("store = \"memory://\""),
        "{shown}"
    );
    assert!(
        line(&shown, "config").ends_with("# env RIDES_CONFIG"),
        "{shown}"
    );
    // A real command takes the file's store: `migrate` on memory:// creates no file here.
    let out = rides(&["migrate"], &[("RIDES_CONFIG", p)], dir.path());
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("memory"), "{said}");
    assert!(
        !dir.path().join("data").exists(),
        "the default sqlite store was not used"
    );
    // A flag beats the file.
    let out = rides(
        &["--config", p, "--store", "sqlite://./here.db", "migrate"],
        &[],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("here.db").exists());
}

#[test]
fn a_bad_config_is_one_clear_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rides.toml");
    let p = path.to_str().unwrap();
    for (text, key, what) in [
        ("lease_ttl = 5\n", "lease_ttl", "unknown field"),
        ("lease_ttl_ms = \"soon\"\n", "lease_ttl_ms", "invalid type"),
        ("listen = \"nowhere\"\n", "listen", "socket address"),
        ("on_failure = \"retry\"\n", "on_failure", "stop or park"),
        ("log_format = \"xml\"\n", "log_format", "text"),
        ("[store]\nurl = \"x\"\n", "store", "invalid type"),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = rides(&["--config", p, "serve"], &[], dir.path());
        assert_eq!(out.status.code(), Some(2), "{text}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: config file "), "{err}");
        assert!(err.contains(key) && err.contains(what), "{text}: {err}");
        assert!(err.contains("rides.toml"), "{err}");
    }
    let out = rides(&["--config", "missing.toml", "serve"], &[], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("not found"));
}
