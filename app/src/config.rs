//! The configuration file: `--config rides.toml` (or `RIDES_CONFIG`), under the environment
//! and the flags.
//!
//! Every setting has three sources, each overriding the one before:
//!
//! ```text
//!   clap's default  <  the TOML file (--config / RIDES_CONFIG)  <  RIDES_… variable  <  --flag
//! ```
//!
//! The file's keys are the flags' names in snake case (`--lease-ttl-ms` is `lease_ttl_ms`,
//! whose variable is `RIDES_LEASE_TTL_MS`), at the top level:
//!
//! ```toml
//! store = "postgres://rides:secret@localhost/rides"
//! log = "redis://localhost:6379/rides?volatile=ok"
//! lease_ttl_ms = 2000
//! consumers = ["distance-a", "distance-b"]   # rides serve
//! header_timeout_ms = 5000                   # rides serve, rides api
//! ```
//!
//! How it works: clap parses the flags and the variables as always (with its defaults), and
//! tells, for each argument, where its value came from ([`clap::parser::ValueSource`]). The
//! file is read with figment into [`FileConfig`] (typed, unknown keys refused), and each of
//! its values replaces the parsed one only where clap fell back to its default. So the
//! file never hides a variable or a flag, and a bad file is one error naming the file and
//! the key (`unknown field: found `lease_ttl`…`, `invalid type: found string "x", expected
//! u64 for key "lease_ttl_ms"`).
//!
//! `rides config show` prints the effective settings and where each came from, with the
//! secrets redacted: passwords in URLs (`postgres://rides:***@…`, and `password=`, `token=`,
//! `secret=`, `key=` query parameters) and the Stripe key (from `STRIPE_SECRET_KEY`, never
//! printed).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Subcommand};
use figment::Figment;
use figment::providers::{Format as _, Toml};
use serde::Deserialize;

use crate::cli::{Cli, Command, Common, HttpArgs};

/// The environment variable naming the config file (like `--config`).
pub const CONFIG_ENV: &str = "RIDES_CONFIG";

/// `rides config …`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ConfigCommand {
    /// Prints the effective configuration and where each value came from (flag, environment
    /// variable, config file or default), with secrets redacted.
    Show,
}

/// What a config file may hold: the flags' names in snake case. Unknown keys are refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--store`.
    pub store: Option<String>,
    /// `--log`.
    pub log: Option<String>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--lock-timeout-ms`.
    pub lock_timeout_ms: Option<i64>,
    /// `--completer-grace-ms`.
    pub completer_grace_ms: Option<i64>,
    /// `--completer-last-run-ms`.
    pub completer_last_run_ms: Option<i64>,
    /// `--reap-after-ms`.
    pub reap_after_ms: Option<i64>,
    /// `--double-send-rate`.
    pub double_send_rate: Option<f64>,
    /// `--consumer-crash-rate`.
    pub consumer_crash_rate: Option<f64>,
    /// `--api-crash-rate`.
    pub api_crash_rate: Option<f64>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--linger-ms`.
    pub linger_ms: Option<u64>,
    /// `--publish` (`streamer` or `direct`).
    pub publish: Option<String>,
    /// `--sweep-delay-ms`.
    pub sweep_delay_ms: Option<u64>,
    /// `--lease-ttl-ms`.
    pub lease_ttl_ms: Option<u64>,
    /// `--on-failure` (`stop` or `park`).
    pub on_failure: Option<String>,
    /// `--replica`.
    pub replica: Option<String>,
    /// `--consumer-expiry-s`.
    pub consumer_expiry_s: Option<u64>,
    /// `--max-attempts`.
    pub max_attempts: Option<u32>,
    /// `--payments`.
    pub payments: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `--log-format` (`text` or `json`).
    pub log_format: Option<String>,
    /// `rides serve --consumers`.
    pub consumers: Option<Vec<String>>,
    /// `rides serve|api --header-timeout-ms`.
    pub header_timeout_ms: Option<u64>,
    /// `rides serve|api --body-timeout-ms`.
    pub body_timeout_ms: Option<u64>,
    /// `rides serve|api --keepalive-timeout-ms`.
    pub keepalive_timeout_ms: Option<u64>,
    /// `rides serve|api --max-connections`.
    pub max_connections: Option<usize>,
    /// `rides serve|api --allow-test-errors`.
    pub allow_test_errors: Option<bool>,
}

impl FileConfig {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// When the file is missing or unreadable, is not TOML, has a key that is not a setting,
    /// or a value of the wrong type: one error naming the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            path.is_file(),
            "config file {}: not found (from --config or {CONFIG_ENV})",
            path.display()
        );
        Figment::from(Toml::file(path))
            .extract::<Self>()
            .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), tidy(&e)))
    }

    /// Reads and checks TOML text (tests, `--config -` is not supported).
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Figment::from(Toml::string(text))
            .extract::<Self>()
            .map_err(|e| anyhow::anyhow!("config: {}", tidy(&e)))
    }
}

/// figment's error without its profile's name in the key (`"default.lease_ttl_ms"`: this
/// file has no profiles).
fn tidy(e: &figment::Error) -> String {
    e.to_string().replace("for key \"default.", "for key \"")
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable (its name).
    Env(String),
    /// The config file (its path).
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag => f.write_str("flag"),
            Self::Env(var) => write!(f, "env {var}"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Default => f.write_str("default"),
        }
    }
}

/// One effective setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Its key (the flag's name in snake case).
    pub key: &'static str,
    /// Its value as TOML, secrets redacted; `None` when unset.
    pub value: Option<String>,
    /// Where it came from.
    pub source: Source,
}

/// The effective settings, in the order of `rides --help`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// Every setting.
    pub settings: Vec<Setting>,
}

impl Provenance {
    /// The setting `key`.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// Whether `key` came from the config file.
    pub fn from_file(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|s| matches!(s.source, Source::File(_)))
    }

    /// `rides config show`: one `key = value  # source` line per setting (valid TOML).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# effective configuration (precedence: default < file < env < flag); config file: {}",
            self.file
                .as_ref()
                .map_or_else(|| "none".to_owned(), |p| p.display().to_string())
        );
        let width = self
            .settings
            .iter()
            .map(|s| s.key.len() + 3 + s.value.as_deref().map_or(0, str::len))
            .max()
            .unwrap_or(0);
        for s in &self.settings {
            let line = match &s.value {
                Some(v) => format!("{} = {v}", s.key),
                None => format!("# {} (unset)", s.key),
            };
            let _ = writeln!(out, "{line:width$}  # {}", s.source);
        }
        out
    }
}

/// Parses the command line (`args`, with the process's environment) and the config file,
/// and returns the command line with the file's values where neither a flag nor a variable
/// gave one, and where each setting came from.
///
/// # Errors
/// A bad flag or variable (clap's error: print it with [`clap::Error::exit`]), or a bad
/// config file (one error naming the file and the key).
pub fn resolve_from<I, T>(args: I) -> Result<Cli, ResolveError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(ResolveError::Clap)?;
    resolve(&matches).map_err(ResolveError::Config)
}

/// What [`resolve_from`] can fail with.
#[derive(Debug)]
pub enum ResolveError {
    /// The command line or a variable is wrong (or `--help`, `--version`).
    Clap(clap::Error),
    /// The config file is wrong.
    Config(anyhow::Error),
}

/// [`resolve_from`] on matches already parsed.
///
/// # Errors
/// A bad config file, one error naming the file and the key.
pub fn resolve(matches: &ArgMatches) -> anyhow::Result<Cli> {
    let mut cli = Cli::from_arg_matches(matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = cli.common.config.clone();
    let file = match &path {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let leaf = leaf(matches);
    let mut r = Resolver {
        leaf,
        path: path.clone(),
        settings: Vec::new(),
    };
    r.common(&mut cli.common, &file)?;
    match &mut cli.command {
        Command::Serve { consumers, http } => {
            r.take("consumers", consumers, file.consumers.clone(), |v| {
                toml_list(v)
            });
            r.http(Some(http), &file);
        }
        Command::Api { http } => {
            r.other("consumers", file.consumers.as_ref().map(|v| toml_list(v)));
            r.http(Some(http), &file);
        }
        _ => {
            r.other("consumers", file.consumers.as_ref().map(|v| toml_list(v)));
            r.http(None, &file);
        }
    }
    r.settings.push(Setting {
        key: "stripe_secret_key",
        value: std::env::var_os(crate::wiring::STRIPE_SECRET_KEY_ENV).map(|_| quote("***")),
        source: if std::env::var_os(crate::wiring::STRIPE_SECRET_KEY_ENV).is_some() {
            Source::Env(crate::wiring::STRIPE_SECRET_KEY_ENV.into())
        } else {
            Source::Default
        },
    });
    cli.provenance = Provenance {
        file: path,
        settings: r.settings,
    };
    Ok(cli)
}

/// The matches of the subcommand that runs (global arguments are propagated to it).
fn leaf(matches: &ArgMatches) -> &ArgMatches {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    m
}

/// The environment variable of `key`.
fn env_name(key: &str) -> String {
    format!("RIDES_{}", key.to_uppercase())
}

/// A TOML string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A TOML list of strings.
fn toml_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
    )
}

/// A URL with its secrets hidden: the password of its user info, and the values of query
/// parameters that name a password, token, secret or key.
pub fn redact_url(url: &str) -> String {
    let url = crate::wiring::redact(url);
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _))
                if ["password", "passwd", "token", "secret", "key"]
                    .iter()
                    .any(|s| k.to_ascii_lowercase().contains(s)) =>
            {
                format!("{k}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Applies the file where clap fell back to a default, and records every setting.
struct Resolver<'m> {
    leaf: &'m ArgMatches,
    path: Option<PathBuf>,
    settings: Vec<Setting>,
}

impl Resolver<'_> {
    /// Where clap took `key` from: `Some(source)` for a flag or a variable.
    fn given(&self, key: &str) -> Option<Source> {
        match self.leaf.value_source(key) {
            Some(ValueSource::CommandLine) => Some(Source::Flag),
            Some(ValueSource::EnvVariable) => Some(Source::Env(env_name(key))),
            _ => None,
        }
    }

    /// `field` (an argument of the running command) from the file unless a flag or a
    /// variable gave it; records it, shown with `show`.
    fn take<T>(
        &mut self,
        key: &'static str,
        field: &mut T,
        from_file: Option<T>,
        show: impl Fn(&T) -> String,
    ) {
        let source = match (self.given(key), from_file) {
            (Some(given), _) => given,
            (None, Some(v)) => {
                *field = v;
                Source::File(self.path.clone().unwrap_or_default())
            }
            (None, None) => Source::Default,
        };
        self.settings.push(Setting {
            key,
            value: Some(show(field)),
            source,
        });
    }

    /// [`Self::take`] for an optional argument without a default.
    fn take_opt<T>(
        &mut self,
        key: &'static str,
        field: &mut Option<T>,
        from_file: Option<T>,
        show: impl Fn(&T) -> String,
    ) {
        let source = match (self.given(key), from_file) {
            (Some(given), _) => given,
            (None, Some(v)) => {
                *field = Some(v);
                Source::File(self.path.clone().unwrap_or_default())
            }
            (None, None) => Source::Default,
        };
        self.settings.push(Setting {
            key,
            value: field.as_ref().map(show),
            source,
        });
    }

    /// A setting of another command (`rides serve`'s consumers while `rides config show`
    /// runs): what that command would use, from the variable, the file or its default.
    fn other(&mut self, key: &'static str, from_file: Option<String>) {
        let var = env_name(key);
        let (value, source) = if let Ok(v) = std::env::var(&var) {
            (Some(quote(&v)), Source::Env(var))
        } else if let Some(v) = from_file {
            (Some(v), Source::File(self.path.clone().unwrap_or_default()))
        } else {
            let default = Cli::command()
                .find_subcommand("serve")
                .and_then(|c| c.get_arguments().find(|a| a.get_id() == key).cloned())
                .and_then(|a| {
                    a.get_default_values()
                        .first()
                        .map(|v| v.to_string_lossy().into_owned())
                });
            // A switch has no default value until clap builds the command: it is off.
            let default = default.or_else(|| (key == "allow_test_errors").then(|| "false".into()));
            let shown = default.map(|d| match key {
                "consumers" => toml_list(&d.split(',').map(str::to_owned).collect::<Vec<_>>()),
                _ => d,
            });
            (shown, Source::Default)
        };
        self.settings.push(Setting { key, value, source });
    }

    /// The flags shared by every command.
    fn common(&mut self, c: &mut Common, f: &FileConfig) -> anyhow::Result<()> {
        let path = self.path.clone().unwrap_or_default();
        let bad = |key: &str, e: String| {
            anyhow::anyhow!("config file {}: key {key:?}: {e}", path.display())
        };
        let url = |v: &String| quote(&redact_url(v));
        let text = |v: &String| quote(v);
        let plain = |v: &dyn std::fmt::Display| v.to_string();
        self.settings.push(Setting {
            key: "config",
            value: c.config.as_ref().map(|p| quote(&p.display().to_string())),
            source: self.given("config").unwrap_or(Source::Default),
        });
        self.take("store", &mut c.store, f.store.clone(), url);
        self.take("log", &mut c.log, f.log.clone(), url);
        self.take("listen", &mut c.listen, f.listen, |v| quote(&v.to_string()));
        self.take(
            "lock_timeout_ms",
            &mut c.lock_timeout_ms,
            f.lock_timeout_ms,
            |v| plain(v),
        );
        self.take(
            "completer_grace_ms",
            &mut c.completer_grace_ms,
            f.completer_grace_ms,
            |v| plain(v),
        );
        self.take(
            "completer_last_run_ms",
            &mut c.completer_last_run_ms,
            f.completer_last_run_ms,
            |v| plain(v),
        );
        self.take(
            "reap_after_ms",
            &mut c.reap_after_ms,
            f.reap_after_ms,
            |v| plain(v),
        );
        self.take_opt(
            "double_send_rate",
            &mut c.double_send_rate,
            f.double_send_rate,
            |v| plain(v),
        );
        self.take_opt(
            "consumer_crash_rate",
            &mut c.consumer_crash_rate,
            f.consumer_crash_rate,
            |v| plain(v),
        );
        self.take_opt(
            "api_crash_rate",
            &mut c.api_crash_rate,
            f.api_crash_rate,
            |v| plain(v),
        );
        self.take_opt("seed", &mut c.seed, f.seed, |v| plain(v));
        self.take("linger_ms", &mut c.linger_ms, f.linger_ms, |v| plain(v));
        if let Some(p) = f.publish.as_deref()
            && !["streamer", "direct"].contains(&p)
        {
            return Err(bad(
                "publish",
                format!("{p:?}: expected \"streamer\" or \"direct\""),
            ));
        }
        self.take("publish", &mut c.publish, f.publish.clone(), text);
        self.take(
            "sweep_delay_ms",
            &mut c.sweep_delay_ms,
            f.sweep_delay_ms,
            |v| plain(v),
        );
        self.take("lease_ttl_ms", &mut c.lease_ttl_ms, f.lease_ttl_ms, |v| {
            plain(v)
        });
        let on_failure = f
            .on_failure
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| bad("on_failure", e))?;
        self.take("on_failure", &mut c.on_failure, on_failure, |v| {
            quote(match v {
                crate::runtime::OnFailure::Stop => "stop",
                crate::runtime::OnFailure::Park => "park",
            })
        });
        self.take("replica", &mut c.replica, f.replica.clone(), url);
        self.take_opt(
            "consumer_expiry_s",
            &mut c.consumer_expiry_s,
            f.consumer_expiry_s,
            |v| plain(v),
        );
        self.take("max_attempts", &mut c.max_attempts, f.max_attempts, |v| {
            plain(v)
        });
        self.take("payments", &mut c.payments, f.payments.clone(), url);
        self.take_opt(
            "metrics_listen",
            &mut c.metrics_listen,
            f.metrics_listen,
            |v| quote(&v.to_string()),
        );
        let log_format = f
            .log_format
            .as_deref()
            .map(|s| <crate::telemetry::LogFormat as clap::ValueEnum>::from_str(s, false))
            .transpose()
            .map_err(|_| bad("log_format", "expected \"text\" or \"json\"".into()))?;
        self.take("log_format", &mut c.log_format, log_format, |v| {
            let name = clap::ValueEnum::to_possible_value(v)
                .map(|p| p.get_name().to_owned())
                .unwrap_or_default();
            text(&name)
        });
        Ok(())
    }

    /// The API's flags (`serve`, `api`); `None` for the other commands, where they are
    /// shown as `rides serve` would take them.
    fn http(&mut self, http: Option<&mut HttpArgs>, f: &FileConfig) {
        let plain = |v: &dyn std::fmt::Display| v.to_string();
        let Some(h) = http else {
            for (key, v) in [
                (
                    "header_timeout_ms",
                    f.header_timeout_ms.map(|v| v.to_string()),
                ),
                ("body_timeout_ms", f.body_timeout_ms.map(|v| v.to_string())),
                (
                    "keepalive_timeout_ms",
                    f.keepalive_timeout_ms.map(|v| v.to_string()),
                ),
                ("max_connections", f.max_connections.map(|v| v.to_string())),
                (
                    "allow_test_errors",
                    f.allow_test_errors.map(|v| v.to_string()),
                ),
            ] {
                self.other(key, v);
            }
            return;
        };
        self.take(
            "header_timeout_ms",
            &mut h.header_timeout_ms,
            f.header_timeout_ms,
            |v| plain(v),
        );
        self.take(
            "body_timeout_ms",
            &mut h.body_timeout_ms,
            f.body_timeout_ms,
            |v| plain(v),
        );
        self.take(
            "keepalive_timeout_ms",
            &mut h.keepalive_timeout_ms,
            f.keepalive_timeout_ms,
            |v| plain(v),
        );
        self.take_opt(
            "max_connections",
            &mut h.max_connections,
            f.max_connections,
            |v| plain(v),
        );
        self.take(
            "allow_test_errors",
            &mut h.allow_test_errors,
            f.allow_test_errors,
            |v| plain(v),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rides.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn cli(args: &[&str]) -> Cli {
        match resolve_from(args) {
            Ok(c) => c,
            Err(ResolveError::Clap(e)) => panic!("{e}"),
            Err(ResolveError::Config(e)) => panic!("{e:#}"),
        }
    }

    fn config_error(args: &[&str]) -> String {
        match resolve_from(args) {
            Err(ResolveError::Config(e)) => format!("{e:#}"),
            Err(ResolveError::Clap(e)) => panic!("a clap error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// Skips a check that a variable set by whoever runs the tests would falsify.
    fn unset(key: &str) -> bool {
        std::env::var_os(env_name(key)).is_none()
    }

    #[test]
    fn the_file_fills_in_what_flags_do_not_give_and_flags_win() {
        let (_dir, path) = write(
            "store = \"memory://\"\nlease_ttl_ms = 1234\nlinger_ms = 9\n\
             consumers = [\"x\", \"y\"]\nheader_timeout_ms = 777\non_failure = \"park\"\n\
             log_format = \"json\"\nseed = 5\nmetrics_listen = \"127.0.0.1:9100\"\n\
             publish = \"direct\"\nsweep_delay_ms = 250\n",
        );
        let p = path.to_str().unwrap();
        let c = cli(&["rides", "--config", p, "serve", "--linger-ms", "3"]);
        if unset("store") {
            assert_eq!(c.common.store, "memory://");
            assert!(c.provenance.from_file("store"));
        }
        if unset("lease_ttl_ms") {
            assert_eq!(c.common.lease_ttl_ms, 1234);
        }
        assert_eq!(c.common.linger_ms, 3, "the flag wins over the file");
        assert_eq!(c.provenance.get("linger_ms").unwrap().source, Source::Flag);
        if unset("on_failure") && unset("log_format") && unset("seed") {
            assert_eq!(c.common.on_failure, crate::runtime::OnFailure::Park);
            assert_eq!(c.common.log_format, crate::telemetry::LogFormat::Json);
            assert_eq!(c.common.seed, Some(5));
        }
        if unset("publish") && unset("sweep_delay_ms") {
            assert_eq!(
                c.common.publish_direct(),
                Some(std::time::Duration::from_millis(250))
            );
        }
        if unset("metrics_listen") {
            assert_eq!(
                c.common.metrics_listen,
                Some("127.0.0.1:9100".parse().unwrap())
            );
        }
        let Command::Serve { consumers, http } = &c.command else {
            panic!("serve");
        };
        if unset("consumers") && unset("header_timeout_ms") {
            assert_eq!(consumers, &["x", "y"]);
            assert_eq!(http.header_timeout_ms, 777);
        }
        // A global flag before the subcommand wins too.
        let c = cli(&[
            "rides",
            "--linger-ms",
            "4",
            "--config",
            p,
            "consumer",
            "list",
        ]);
        assert_eq!(c.common.linger_ms, 4);
        assert_eq!(c.provenance.get("linger_ms").unwrap().source, Source::Flag);
        if unset("lease_ttl_ms") {
            assert_eq!(
                c.common.lease_ttl_ms, 1234,
                "nested subcommands read the file"
            );
        }
        // Without a file, clap's defaults.
        let c = cli(&["rides", "serve"]);
        if unset("lease_ttl_ms") && unset("config") {
            assert_eq!(c.common.lease_ttl_ms, 5_000);
            assert_eq!(
                c.provenance.get("lease_ttl_ms").unwrap().source,
                Source::Default
            );
        }
    }

    #[test]
    fn a_bad_file_is_one_error_naming_the_key() {
        let (_dir, path) = write("lease_ttl = 5\n");
        let e = config_error(&["rides", "--config", path.to_str().unwrap(), "serve"]);
        assert!(e.contains("lease_ttl") && e.contains("rides.toml"), "{e}");
        assert!(e.contains("unknown field"), "{e}");

        let (_dir, path) = write("lease_ttl_ms = \"soon\"\n");
        let e = config_error(&["rides", "--config", path.to_str().unwrap(), "serve"]);
        assert!(e.contains("lease_ttl_ms") && e.contains("string"), "{e}");

        let (_dir, path) = write("listen = \"nowhere\"\n");
        let e = config_error(&["rides", "--config", path.to_str().unwrap(), "serve"]);
        assert!(e.contains("listen"), "{e}");

        let (_dir, path) = write("on_failure = \"retry\"\n");
        let e = config_error(&["rides", "--config", path.to_str().unwrap(), "serve"]);
        assert!(
            e.contains("on_failure") && e.contains("stop or park"),
            "{e}"
        );

        let (_dir, path) = write("publish = \"sideways\"\n");
        let e = config_error(&["rides", "--config", path.to_str().unwrap(), "serve"]);
        assert!(e.contains("publish") && e.contains("direct"), "{e}");

        let (_dir, path) = write("store = \n");
        let e = config_error(&["rides", "--config", path.to_str().unwrap(), "serve"]);
        assert!(e.contains("rides.toml"), "{e}");

        let e = config_error(&["rides", "--config", "/nonexistent/rides.toml", "serve"]);
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("postgres://rides:hunter2@db:5432/rides?sslmode=require&password=x"),
            "postgres://rides:***@db:5432/rides?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("redis://:hunter2@localhost:6379/rides?volatile=ok"),
            "redis://:***@localhost:6379/rides?volatile=ok"
        );
        assert_eq!(
            redact_url("stripe://?base=http://localhost:12111&api_key=sk_live_1"),
            "stripe://?base=http://localhost:12111&api_key=***"
        );
        let (_dir, path) = write("store = \"postgres://rides:hunter2@db/rides\"\n");
        let c = cli(&[
            "rides",
            "--config",
            path.to_str().unwrap(),
            "config",
            "show",
        ]);
        let shown = c.provenance.render();
        if unset("store") {
            assert!(shown.contains("postgres://rides:***@db/rides"), "{shown}");
        }
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn the_rendering_is_toml_with_sources() {
        let (_dir, path) = write("lease_ttl_ms = 42\n");
        let c = cli(&[
            "rides",
            "--config",
            path.to_str().unwrap(),
            "config",
            "show",
        ]);
        let shown = c.provenance.render();
        // Valid TOML, all of it: the comments are comments.
        let parsed: toml::Table = shown.parse().unwrap();
        if unset("lease_ttl_ms") {
            assert_eq!(parsed["lease_ttl_ms"].as_integer(), Some(42));
            assert!(shown.contains("# file "), "{shown}");
        }
        assert!(parsed.contains_key("store") && parsed.contains_key("consumers"));
    }
}
