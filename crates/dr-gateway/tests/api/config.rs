//! `dr-gateway serve` refuses settings that cannot work before it serves anything:
//! it exits with status 2 and one line naming the flag (the real binary, real
//! arguments); and it accepts host names where people type them.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{API_KEY, WEBHOOK_SECRET};

/// Runs `dr-gateway serve` with `args` (and a valid key and webhook secret in the
/// environment unless `bare`), expecting it to exit on its own; returns (exit
/// code, stderr).
fn serve(args: &[&str], bare: bool) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dr-gateway"));
    command.arg("serve");
    for (flag, addr) in [
        ("--grpc-addr", "127.0.0.1:0"),
        ("--http-addr", "127.0.0.1:0"),
    ] {
        if !args.contains(&flag) {
            command.args([flag, addr]);
        }
    }
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !bare {
        command
            .env("DR_GATEWAY_DR_API_KEY", API_KEY)
            .env("DR_GATEWAY_WEBHOOK_SECRETS", WEBHOOK_SECRET);
    }
    let mut child = command.spawn().expect("spawn dr-gateway");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use std::io::Read as _;
                let _ = pipe.read_to_string(&mut stderr);
            }
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dr-gateway serve {args:?} did not exit: it accepted the settings");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_refused(args: &[&str], flag: &str) {
    let (code, stderr) = serve(args, false);
    assert_eq!(code, Some(2), "{args:?} exited {code:?}: {stderr}");
    assert!(
        stderr.contains(flag),
        "{args:?}: the message names {flag}: {stderr}"
    );
    assert!(
        !stderr.contains("TOPSECRET"),
        "no secret in the message: {stderr}"
    );
}

#[test]
fn zero_durations_and_sizes_are_refused_naming_the_flag() {
    for flag in [
        "--upstream-timeout",
        "--reconcile-timeout",
        "--idempotency-ttl",
        "--shutdown-grace",
        "--webhook-tolerance",
        "--grpc-keepalive-interval",
        "--grpc-max-connection-age",
    ] {
        assert_refused(&[flag, "0s"], flag);
    }
    for flag in [
        "--webhook-max-body",
        "--grpc-max-receive-message-size",
        "--consumer-groups-max",
        "--consumer-group-max-pending",
    ] {
        assert_refused(&[flag, "0"], flag);
    }
}

#[test]
fn a_bus_bucket_name_nats_cannot_use_is_refused_naming_the_flag() {
    for flag in [
        "--bus-groups-bucket",
        "--bus-idempotency-bucket",
        "--bus-stream",
    ] {
        assert_refused(
            &[
                "--bus-url",
                "nats://127.0.0.1:4222",
                flag,
                "groups.of.orders",
            ],
            flag,
        );
    }
}

#[test]
fn negative_durations_are_refused_naming_the_flag() {
    assert_refused(&["--upstream-timeout=-1s"], "--upstream-timeout");
}

#[test]
fn a_dr_base_url_that_is_not_http_is_refused() {
    assert_refused(
        &["--dr-base-url", "ftp://api.digitalriver.com"],
        "--dr-base-url",
    );
    assert_refused(&["--dr-base-url", "api.digitalriver.com"], "--dr-base-url");
}

#[test]
fn no_webhook_secret_is_refused_unless_webhooks_are_disabled() {
    let (code, stderr) = serve(&[], true);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--dr-api-key"), "{stderr}");
    let mut command_args = vec!["--dr-api-key", API_KEY];
    let (code, stderr) = serve(&command_args, true);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--webhook-secret") && stderr.contains("--webhooks-disabled"),
        "{stderr}"
    );
    assert!(!stderr.contains("TOPSECRET"), "{stderr}");
    // With webhooks disabled it starts (and is stopped by the deadline check below).
    command_args.push("--webhooks-disabled");
    let (_, addr) = start_until_serving(&command_args, true);
    assert!(
        addr.is_some(),
        "--webhooks-disabled starts without a secret"
    );
}

#[test]
fn unreadable_files_are_refused_naming_the_flag() {
    assert_refused(
        &["--dr-api-key-file", "/nonexistent/dr-api-key"],
        "--dr-api-key-file",
    );
    assert_refused(
        &["--webhook-secrets-file", "/nonexistent/webhook-secrets"],
        "--webhook-secrets-file",
    );
    assert_refused(
        &[
            "--bus-url",
            "nats://127.0.0.1:4222",
            "--bus-creds-file",
            "/nonexistent/nats.creds",
        ],
        "--bus-creds-file",
    );
    assert_refused(
        &[
            "--bus-url",
            "nats://127.0.0.1:4222",
            "--bus-tls-ca-file",
            "/nonexistent/ca.pem",
        ],
        "--bus-tls-ca-file",
    );
    // The gRPC listener's TLS material, the token file and the policy.
    assert_refused(
        &[
            "--tls-cert-file",
            "/nonexistent/tls.crt",
            "--tls-key-file",
            "/nonexistent/tls.key",
        ],
        "--tls-cert-file",
    );
    assert_refused(
        &["--auth-tokens-file", "/nonexistent/tokens.txt"],
        "--auth-tokens-file",
    );
    assert_refused(
        &["--auth-policy-file", "/nonexistent/policy.toml"],
        "--auth-policy-file",
    );
}

#[test]
fn malformed_listen_addresses_are_refused_naming_the_flag() {
    assert_refused(&["--grpc-addr", "localhost"], "--grpc-addr");
    assert_refused(&["--http-addr", "local host:8080"], "--http-addr");
    assert_refused(&["--grpc-health-addr", "localhost"], "--grpc-health-addr");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `serve` with `args` on `localhost` ports and waits (deadline 20 s) until
/// `dr-gateway health-check --addr localhost:PORT` says SERVING; kills it then.
/// Returns (the process's exit code if it died, the address that answered).
///
/// why: the ports are picked by binding `:0` and releasing them, because these
/// tests pass the address forms people type (`localhost:PORT`). Another test can
/// take such a port before the child binds it; the child then exits saying the
/// address is in use, and the start is tried again on other ports.
fn start_until_serving(args: &[&str], bare: bool) -> (Option<i32>, Option<String>) {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        if let Start::Done { died, answered } = start_once(args, bare) {
            return (died, answered);
        }
    }
    panic!("serve found one of its ports taken {ATTEMPTS} times in a row");
}

/// How one start of `serve` ended.
enum Start {
    /// It exited because another process had taken one of its ports.
    PortTaken,
    /// It exited with this code, or `health-check` at this address said SERVING
    /// (or neither, by the deadline).
    Done {
        died: Option<i32>,
        answered: Option<String>,
    },
}

fn start_once(args: &[&str], bare: bool) -> Start {
    let grpc = format!("localhost:{}", free_port());
    let http = format!("localhost:{}", free_port());
    let stderr_path = std::env::temp_dir().join(format!(
        "dr-gateway-config-{}-{}.stderr",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_dr-gateway"));
    command
        .arg("serve")
        .args(["--grpc-addr", &grpc, "--http-addr", &http])
        .args([
            "--dr-base-url",
            "http://127.0.0.1:9",
            "--backfill-interval",
            "0s",
        ])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(stderr);
    if !bare {
        command
            .env("DR_GATEWAY_DR_API_KEY", API_KEY)
            .env("DR_GATEWAY_WEBHOOK_SECRETS", WEBHOOK_SECRET);
    }
    let mut child = command.spawn().expect("spawn dr-gateway");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (died, answered) = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break (status.code(), None);
        }
        let check = Command::new(env!("CARGO_BIN_EXE_dr-gateway"))
            .args(["health-check", "--addr", &grpc])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run health-check");
        if check.success() {
            break (None, Some(grpc.clone()));
        }
        if Instant::now() > deadline {
            break (None, None);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let printed = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    if died.is_some() && printed.contains("Address already in use") {
        return Start::PortTaken;
    }
    Start::Done { died, answered }
}

#[test]
fn host_names_are_accepted_as_listen_addresses_and_by_health_check() {
    let (died, answered) = start_until_serving(&[], false);
    assert_eq!(died, None, "serve exited");
    assert!(
        answered.is_some_and(|a| a.starts_with("localhost:")),
        "health-check --addr localhost:PORT answered SERVING"
    );
}
