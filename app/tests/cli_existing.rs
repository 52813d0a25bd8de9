//! Commands that read an existing system (`verify`, `log status`, `log cutover`) refuse a store
//! or log that does not exist, with a clear message, and create nothing (the real binary).

use std::process::Command;

fn rides(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rides"))
        .args(args)
        .env_remove("RIDES_STORE")
        .env_remove("RIDES_LOG")
        .output()
        .expect("run rides")
}

#[test]
fn read_only_commands_do_not_invent_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}", dir.path().join("nope/rides.db").display());
    let log = format!("sled://{}", dir.path().join("nope/log").display());
    for command in [
        &["verify"][..],
        &["log", "status"],
        &["log", "cutover", "--to", "memory://"],
    ] {
        let mut args = command.to_vec();
        args.extend(["--store", store.as_str(), "--log", log.as_str()]);
        let out = rides(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?} must fail: {stderr}");
        assert!(
            stderr.contains("does not exist") && stderr.contains("nope/rides.db"),
            "{command:?} must say which store is missing: {stderr}"
        );
        assert!(
            !dir.path().join("nope").exists(),
            "{command:?} created the store it was asked to read"
        );
    }
}

#[test]
fn a_memory_store_cannot_be_verified_from_another_process() {
    let out = rides(&["verify", "--store", "memory://", "--log", "memory://"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("one process only"), "{stderr}");
}
