//! The real `rides demo` binary: what it prints and where its logs go.
//!
//! - `--json` prints exactly one line on stdout, the verdict, and nothing on stderr;
//! - the service logs are in `demo.log` in the data directory, whose path the verdict names;
//!   injected faults are there at INFO with a `fault` field, never at WARN;
//! - `--log-format json` makes every log line a JSON object, in the demo's file (and on
//!   stderr with `-v`) and on a service's stderr;
//! - without `--json`, stdout is the verdict table and the log file's path;
//! - with the `stripe` feature, the demo charges through `--payments stripe://` against a
//!   Stripe-compatible server in the test suite.

use std::path::Path;
use std::process::{Command, Output};

fn rides(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rides"));
    cmd.args(args);
    for var in [
        "RIDES_STORE",
        "RIDES_LOG",
        "RIDES_LOG_FORMAT",
        "RIDES_PAYMENTS",
        "RIDES_DATA_DIR",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run rides")
}

fn small_demo<'a>(dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "demo",
        "--rides",
        "80",
        "--seed",
        "5",
        "--concurrency",
        "4",
        "--settle-timeout-s",
        "60",
        "--data-dir",
        dir,
    ];
    args.extend_from_slice(extra);
    args
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one line of stdout, parsed; panics unless stdout is exactly one JSON line.
fn only_json_line(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must be exactly one line:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    serde_json::from_str(lines[0]).expect("the line is JSON")
}

fn read_log(v: &serde_json::Value, dir: &Path) -> String {
    let path = v["log_file"]
        .as_str()
        .expect("the verdict names its log file");
    assert_eq!(Path::new(path), dir.join("demo.log"));
    std::fs::read_to_string(path).expect("the log file exists")
}

#[test]
fn json_prints_one_line_and_the_logs_go_to_the_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let dir_s = dir.display().to_string();
    let out = rides(&small_demo(&dir_s, &["--json"]));
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let v = only_json_line(&out);
    assert_eq!(v["agree"], true, "{v}");
    assert_eq!(v["truth"]["rides"], 80, "{v}");
    assert_eq!(
        text(&out.stderr),
        "",
        "--json prints nothing else, logs included"
    );

    let log = read_log(&v, &dir);
    let faults: Vec<&str> = log.lines().filter(|l| l.contains("fault=")).collect();
    let injected = v["faults"]["api_crashes"].as_u64().unwrap()
        + v["faults"]["double_sends"].as_u64().unwrap()
        + v["faults"]["consumer_crashes"].as_u64().unwrap();
    assert!(injected > 0, "{v}");
    assert_eq!(
        faults.len() as u64,
        injected,
        "one line per injected fault:\n{log}"
    );
    assert!(
        faults.iter().all(|l| l.contains(" INFO ")),
        "faults are logged at INFO:\n{}",
        faults.join("\n")
    );
    assert!(
        !log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("fault")),
        "no fault at WARN:\n{log}"
    );
    assert!(
        !log.contains("simulated API crash"),
        "the crash's own line is DEBUG"
    );
    assert!(log.contains("demo finished"), "{log}");
}

#[test]
fn json_log_lines_and_verbose_show_them_on_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let dir_s = dir.display().to_string();
    let out = rides(&small_demo(
        &dir_s,
        &["--json", "--log-format", "json", "-v"],
    ));
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let v = only_json_line(&out);
    assert_eq!(v["agree"], true, "{v}");

    let log = read_log(&v, &dir);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let faults: Vec<&serde_json::Value> = lines.iter().filter(|l| l["fault"].is_string()).collect();
    assert!(!faults.is_empty(), "{log}");
    assert!(faults.iter().all(|l| l["level"] == "INFO"), "{log}");
    assert!(
        faults
            .iter()
            .all(|l| ["api_crash", "double_send", "consumer_crash"]
                .contains(&l["fault"].as_str().unwrap())),
        "{log}"
    );

    // -v: the same lines on stderr too, each a JSON object.
    let stderr = text(&out.stderr);
    let on_terminal: Vec<&str> = stderr.lines().collect();
    assert_eq!(on_terminal.len(), lines.len(), "{stderr}");
    for l in on_terminal {
        let _: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
}

#[test]
fn the_terminal_gets_the_table_and_the_log_files_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let dir_s = dir.display().to_string();
    let out = rides(&small_demo(&dir_s, &[]));
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("VERDICT: every consumer equals the truth"),
        "{stdout}"
    );
    let log_path = dir.join("demo.log").display().to_string();
    assert!(
        stdout.contains(&format!("service logs: {log_path} (")),
        "{stdout}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&log_path),
        "the path is printed first: {stderr}"
    );
    assert!(
        !stderr.contains(" INFO ") && !stderr.contains(" WARN "),
        "no log line on the terminal without -v:\n{stderr}"
    );
}

#[test]
fn a_service_logs_json_lines_on_stderr() {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rides"))
        .args(["api", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args([
            "--store",
            &format!("sqlite://{}", tmp.path().join("rides.db").display()),
        ])
        .args([
            "--log",
            &format!("sled://{}", tmp.path().join("log").display()),
        ])
        .env_remove("RUST_LOG")
        .env_remove("RIDES_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rides api");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let listening = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => {
                let v: serde_json::Value =
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
                lines.push(l);
                if v["message"] == "listening" {
                    break v;
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no `listening` line ({e}): {lines:#?}");
            }
        }
    };
    assert_eq!(listening["level"], "INFO");
    assert!(
        listening["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{listening}"
    );
    assert!(listening["timestamp"].is_string() && listening["target"].is_string());
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(feature = "stripe")]
#[path = "../../adapters/tests/support/stripe_server.rs"]
mod stripe_server;

#[cfg(feature = "stripe")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_charges_through_stripe() {
    const KEY: &str = "sk_test_demo_key_never_printed";
    let server = stripe_server::StripeServer::start(KEY).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let dir_s = dir.display().to_string();
    let payments = format!("stripe://?base={}&timeout_ms=2000", server.base_url());
    let args: Vec<String> = small_demo(&dir_s, &["--json", "--payments", &payments])
        .into_iter()
        .map(str::to_owned)
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rides"));
        cmd.args(&args)
            .env("STRIPE_SECRET_KEY", KEY)
            .env_remove("RUST_LOG")
            .env_remove("RIDES_LOG_FORMAT");
        cmd.output().expect("run rides")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let v = only_json_line(&out);
    assert_eq!(v["agree"], true, "{v}");
    let log = read_log(&v, &dir);
    assert!(!log.contains(KEY), "the secret key is never logged");
    assert!(log.contains("payments on Stripe"), "{log}");

    let seen = server.requests();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|r| r.path == "/v1/charges"
        && r.authorization.as_deref() == Some(&*format!("Bearer {KEY}"))
        && r.field("amount") == Some("2000")
        && r.field("currency") == Some("usd")));
    let mut keys: Vec<&str> = seen
        .iter()
        .map(|r| {
            r.idempotency_key
                .as_deref()
                .expect("every charge has a key")
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let charges = server.charges();
    let declined = seen
        .iter()
        .filter(|r| r.field("source") == Some("tok_chargeDeclined"))
        .map(|r| r.idempotency_key.as_deref())
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(
        charges.len() + declined,
        keys.len(),
        "one charge or decline per ride key, never two"
    );
    if v["faults"]["api_crashes"].as_u64().unwrap() > 0 {
        assert!(
            seen.len() > keys.len(),
            "requests that crashed after their charge charged again with the same key"
        );
    }
}
