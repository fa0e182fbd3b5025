//! Callers are who they say: TLS, mutual TLS identities, bearer tokens, the
//! authorization policy (and its reload), and the caller on DR's fulfillment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dr_gateway::auth::AuthSettings;
use dr_gateway::bus::BusConfig;
use dr_gateway::config::Settings;
use dr_gateway::health::HEALTH_NAMES;
use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::charge_service_client::ChargeServiceClient;
use dr_gateway::pb::v1::event_stream_client::EventStreamClient;
use dr_gateway::tls::{ClientAuth, TlsSettings};
use dr_sandbox::{SandboxConfig, SettleMode, WebhookRegistration};
use futures::StreamExt as _;
use serde_json::json;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

use crate::event_support::{deliver, event, next_event, webhook_url, WAIT};
use crate::helpers::{
    captured_logs, settings, spawn_app_with, spawn_sandbox, spawn_sandbox_with, with_deadline,
    TestSandbox, WEBHOOK_SECRET,
};
use crate::tls_support::{
    dr_fulfillments, plaintext_channel, temp_dir, tls_channel, token_entry, with_token,
    write_atomically, Ca, Pem,
};

const READER: &str = "spiffe://cluster.local/ns/reports/sa/reader";
const FULFILLER: &str = "spiffe://cluster.local/ns/shipping/sa/fulfiller";
const CAPTURE_METHOD: &str = "/digitalriver.gateway.v1.ChargeService/CaptureItems";

/// The files of one secured gateway.
struct Files {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    policy: PathBuf,
    tokens: PathBuf,
}

impl Files {
    fn new(name: &str, server: &Pem, client_ca: &Ca) -> Self {
        let dir = temp_dir(name);
        let files = Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            client_ca: dir.join("ca.crt"),
            policy: dir.join("policy.toml"),
            tokens: dir.join("tokens.txt"),
            dir,
        };
        std::fs::write(&files.cert, &server.cert).unwrap();
        std::fs::write(&files.key, &server.key).unwrap();
        std::fs::write(&files.client_ca, client_ca.pem()).unwrap();
        files
    }

    fn tls(&self, client_ca: bool) -> TlsSettings {
        TlsSettings {
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            client_ca_file: client_ca.then(|| self.client_ca.clone()),
            client_auth: ClientAuth::Required,
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn secured(dr: &TestSandbox, tls: Option<TlsSettings>, auth: AuthSettings) -> Settings {
    let mut s = settings(&dr.base_url());
    s.security.tls = tls;
    s.security.auth = auth;
    s.security.reload_interval = Duration::from_millis(50);
    s
}

/// An order of two units in the sandbox: (order id, item id).
async fn order(dr: &TestSandbox) -> (String, String) {
    let order = dr
        .control
        .create_order(json!({"items": [{"quantity": 2, "amount": "25.00"}]}))
        .await
        .unwrap();
    (
        order["id"].as_str().unwrap().to_owned(),
        order["items"][0]["id"].as_str().unwrap().to_owned(),
    )
}

fn capture(order_id: &str, item_id: &str, request_id: &str) -> pb::CaptureItemsRequest {
    pb::CaptureItemsRequest {
        order_id: order_id.into(),
        items: vec![pb::ChargeItem {
            item_id: item_id.into(),
            quantity: 1,
            ..Default::default()
        }],
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn list_charges(order_id: &str) -> pb::ListOrderChargesRequest {
    pb::ListOrderChargesRequest {
        order_id: order_id.into(),
    }
}

/// Whether a call through a fresh connection with these credentials is served at all
/// (a refused handshake fails either the connection or the first call).
async fn health_over(addr: std::net::SocketAddr, ca: &str, identity: Option<&Pem>) -> bool {
    let Ok(channel) = tls_channel(addr, ca, identity).await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok()
}

/// Waits until `check` holds, or fails the test after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_no_secrets_in_logs(secrets: &[&str]) {
    let logs = captured_logs();
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}

/// The base64 body of a PEM key (what would leak if key material were logged).
fn key_body(pem: &Pem) -> String {
    pem.key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
}

#[tokio::test]
async fn with_tls_plaintext_is_refused_and_tls_serves_calls() {
    let dr = spawn_sandbox().await;
    let ca = Ca::new("server CA");
    let server = ca.server();
    let files = Files::new("tls-only", &server, &ca);
    let app = spawn_app_with(secured(
        &dr,
        Some(files.tls(false)),
        AuthSettings::default(),
    ))
    .await;
    let (order_id, _) = order(&dr).await;

    let plaintext = ChargeServiceClient::new(plaintext_channel(app.grpc_addr))
        .list_order_charges(list_charges(&order_id))
        .await;
    assert!(plaintext.is_err(), "plaintext must not be served");

    let channel = tls_channel(app.grpc_addr, &ca.pem(), None).await.unwrap();
    let charges = ChargeServiceClient::new(channel)
        .list_order_charges(list_charges(&order_id))
        .await
        .expect("TLS serves the API")
        .into_inner();
    assert_eq!(charges.order_id, order_id);
    let other_ca = Ca::new("someone else");
    assert!(
        !health_over(app.grpc_addr, &other_ca.pem(), None).await,
        "a client that does not trust the server's CA does not get through"
    );
    assert_no_secrets_in_logs(&[&key_body(&server)]);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn with_mtls_required_a_client_without_a_certificate_or_from_another_ca_is_refused() {
    let dr = spawn_sandbox().await;
    let ca = Ca::new("cluster CA");
    let files = Files::new("mtls", &ca.server(), &ca);
    let app = spawn_app_with(secured(&dr, Some(files.tls(true)), AuthSettings::default())).await;

    assert!(
        !health_over(app.grpc_addr, &ca.pem(), None).await,
        "no certificate"
    );
    let stranger = Ca::new("another CA").client(READER);
    assert!(
        !health_over(app.grpc_addr, &ca.pem(), Some(&stranger)).await,
        "a certificate from another CA"
    );
    assert!(
        health_over(app.grpc_addr, &ca.pem(), Some(&ca.client(READER))).await,
        "a certificate from the client CA"
    );
    assert_no_secrets_in_logs(&[&key_body(&stranger)]);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_reader_identity_may_read_but_not_capture_and_a_fulfillers_capture_carries_its_identity_to_dr(
) {
    let dr = spawn_sandbox().await;
    let ca = Ca::new("cluster CA");
    let files = Files::new("policy", &ca.server(), &ca);
    std::fs::write(
        &files.policy,
        format!(
            "[[rules]]\nname = \"reports\"\nidentities = [\"{READER}\"]\nallow = [\"read\"]\n\
             [[rules]]\nname = \"shipping\"\nidentities = [\"{FULFILLER}\"]\nallow = [\"read\", \"capture\"]\n"
        ),
    )
    .unwrap();
    let auth = AuthSettings {
        policy_file: Some(files.policy.clone()),
        required: true,
        ..AuthSettings::default()
    };
    let app = spawn_app_with(secured(&dr, Some(files.tls(true)), auth)).await;
    let (order_id, item_id) = order(&dr).await;
    let reader_pem = ca.client(READER);
    let mut reader = ChargeServiceClient::new(
        tls_channel(app.grpc_addr, &ca.pem(), Some(&reader_pem))
            .await
            .unwrap(),
    );

    let charges = reader
        .list_order_charges(list_charges(&order_id))
        .await
        .expect("read allowed")
        .into_inner();
    let charge = reader
        .get_charge(pb::GetChargeRequest {
            charge_id: charges.charges[0].id.clone(),
        })
        .await
        .expect("GetCharge allowed");
    assert_eq!(
        charge.into_inner().charge.unwrap().id,
        charges.charges[0].id
    );
    let denied = reader
        .capture_items(capture(&order_id, &item_id, "reader-1"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let info = denied.get_details_error_info().unwrap();
    assert_eq!(info.reason, "METHOD_NOT_ALLOWED");
    assert_eq!(info.metadata["method"], CAPTURE_METHOD);
    assert!(!denied.message().contains("shipping") && !denied.message().contains(FULFILLER));
    assert!(dr_fulfillments(&dr.base_url(), &order_id).await.is_empty());

    let mut fulfiller = ChargeServiceClient::new(
        tls_channel(app.grpc_addr, &ca.pem(), Some(&ca.client(FULFILLER)))
            .await
            .unwrap(),
    );
    let captured = fulfiller
        .capture_items(capture(&order_id, &item_id, "ship-1"))
        .await
        .expect("capture allowed")
        .into_inner();
    let held = dr_fulfillments(&dr.base_url(), &order_id).await;
    assert_eq!(held.len(), 1, "one fulfillment at DR");
    assert_eq!(held[0]["metadata"]["caller"], FULFILLER);
    assert_eq!(held[0]["metadata"]["requestId"], "ship-1");
    assert_eq!(captured.fulfillment.unwrap().metadata["caller"], FULFILLER);
    assert_no_secrets_in_logs(&[&key_body(&reader_pem)]);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn tokens_name_their_callers_and_a_wrong_or_missing_token_is_unauthenticated() {
    const SHIPPING_TOKEN: &str = "tok_shipping_0d1f2e3c4b5a69788796a5b4c3d2e1f0";
    const AUDIT_TOKEN: &str = "tok_audit_11223344556677889900aabbccddeeff";
    let dr = spawn_sandbox().await;
    let ca = Ca::new("server CA");
    let files = Files::new("tokens", &ca.server(), &ca);
    std::fs::write(
        &files.tokens,
        token_entry("shipping", SHIPPING_TOKEN) + &token_entry("audit", AUDIT_TOKEN),
    )
    .unwrap();
    std::fs::write(
        &files.policy,
        "[[rules]]\nname = \"shipping\"\nidentities = [\"token:shipping\"]\nallow = [\"read\", \"capture\"]\n\
         [[rules]]\nname = \"audit\"\nidentities = [\"token:audit\"]\nallow = [\"capture\"]\n",
    )
    .unwrap();
    let auth = AuthSettings {
        tokens_file: Some(files.tokens.clone()),
        policy_file: Some(files.policy.clone()),
        required: true,
    };
    let app = spawn_app_with(secured(&dr, Some(files.tls(false)), auth)).await;
    let (order_id, item_id) = order(&dr).await;
    let mut charges =
        ChargeServiceClient::new(tls_channel(app.grpc_addr, &ca.pem(), None).await.unwrap());

    let wrong = charges
        .list_order_charges(with_token(list_charges(&order_id), "tok_guess"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(
        wrong.get_details_error_info().unwrap().reason,
        "INVALID_TOKEN"
    );
    let missing = charges
        .list_order_charges(list_charges(&order_id))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(
        missing.get_details_error_info().unwrap().reason,
        "CREDENTIALS_REQUIRED"
    );
    let audit_reads = charges
        .list_order_charges(with_token(list_charges(&order_id), AUDIT_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(audit_reads.code(), Code::PermissionDenied);

    charges
        .list_order_charges(with_token(list_charges(&order_id), SHIPPING_TOKEN))
        .await
        .expect("the named token is allowed to read");
    let first = charges
        .capture_items(with_token(
            capture(&order_id, &item_id, "ship-7"),
            SHIPPING_TOKEN,
        ))
        .await
        .expect("the named token may capture")
        .into_inner();
    let retry = charges
        .capture_items(with_token(
            capture(&order_id, &item_id, "ship-7"),
            SHIPPING_TOKEN,
        ))
        .await
        .expect("a retry by the same caller replays")
        .into_inner();
    assert_eq!(first.fulfillment.unwrap().id, retry.fulfillment.unwrap().id);
    let reused = charges
        .capture_items(with_token(
            capture(&order_id, &item_id, "ship-7"),
            AUDIT_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        reused.code(),
        Code::InvalidArgument,
        "another caller's request_id"
    );

    let held = dr_fulfillments(&dr.base_url(), &order_id).await;
    assert_eq!(held.len(), 1, "money moved once");
    assert_eq!(held[0]["metadata"]["caller"], "token:shipping");
    for status in [&wrong, &missing, &audit_reads, &reused] {
        assert!(!format!("{status:?}").contains(SHIPPING_TOKEN));
        assert!(!format!("{status:?}").contains(AUDIT_TOKEN));
    }
    assert_no_secrets_in_logs(&[SHIPPING_TOKEN, AUDIT_TOKEN, "tok_guess"]);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_new_policy_and_certificate_apply_to_new_calls_while_an_open_subscribe_stream_keeps_flowing(
) {
    let dr = spawn_sandbox().await;
    let ca = Ca::new("cluster CA");
    let files = Files::new("reload", &ca.server(), &ca);
    let policy = |allow: &str| {
        format!(
            "[[rules]]\nname = \"shipping\"\nidentities = [\"{FULFILLER}\"]\nallow = [{allow}]\n"
        )
    };
    std::fs::write(&files.policy, policy("\"read\", \"subscribe\"")).unwrap();
    let auth = AuthSettings {
        policy_file: Some(files.policy.clone()),
        required: true,
        ..AuthSettings::default()
    };
    let app = spawn_app_with(secured(&dr, Some(files.tls(true)), auth)).await;
    let fulfiller = ca.client(FULFILLER);
    let channel: Channel = tls_channel(app.grpc_addr, &ca.pem(), Some(&fulfiller))
        .await
        .unwrap();
    let mut stream = EventStreamClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe allowed")
        .into_inner();
    deliver(&app, &event("evt_before", "order.accepted", "ord-1", false)).await;
    assert_eq!(next_event(&mut stream).await.id, "evt_before");

    // The policy no longer lets this identity subscribe.
    write_atomically(&files.policy, &policy("\"read\""));
    let subscribe_again = || {
        let channel = channel.clone();
        async move {
            EventStreamClient::new(channel)
                .subscribe(pb::SubscribeRequest::default())
                .await
                .err()
                .is_some_and(|s| s.code() == Code::PermissionDenied)
        }
    };
    eventually("new Subscribe calls are denied", subscribe_again).await;
    deliver(
        &app,
        &event("evt_after_policy", "order.accepted", "ord-1", false),
    )
    .await;
    assert_eq!(
        next_event(&mut stream).await.id,
        "evt_after_policy",
        "the open stream was not cut"
    );

    // cert-manager rotates the server certificate to one from a new CA.
    let new_ca = Ca::new("rotated CA");
    let new_ca_pem = new_ca.pem();
    let rotated = new_ca.server();
    write_atomically(&files.key, &rotated.key);
    write_atomically(&files.cert, &rotated.cert);
    eventually("new connections get the new certificate", || {
        health_over(app.grpc_addr, &new_ca_pem, Some(&fulfiller))
    })
    .await;
    assert!(
        !health_over(app.grpc_addr, &ca.pem(), Some(&fulfiller)).await,
        "the old certificate is no longer served"
    );
    deliver(
        &app,
        &event("evt_after_cert", "order.accepted", "ord-1", false),
    )
    .await;
    assert_eq!(next_event(&mut stream).await.id, "evt_after_cert");

    // A broken file keeps the configuration in force.
    write_atomically(&files.policy, "rules = 'not a list'");
    write_atomically(&files.cert, "not a certificate");
    eventually("the broken files were seen and refused", || async {
        let logs = captured_logs();
        logs.contains("the policy file is not valid") && logs.contains("holds no CERTIFICATE block")
    })
    .await;
    assert!(
        health_over(app.grpc_addr, &new_ca.pem(), Some(&fulfiller)).await,
        "the rotated certificate stays in force"
    );
    assert!(
        subscribe_again().await,
        "the last good policy stays in force"
    );
    assert_no_secrets_in_logs(&[&key_body(&rotated), &key_body(&fulfiller)]);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn the_health_only_listener_answers_probes_in_plaintext_and_serves_nothing_else() {
    let dr = spawn_sandbox().await;
    let ca = Ca::new("cluster CA");
    let files = Files::new("health", &ca.server(), &ca);
    let mut s = secured(&dr, Some(files.tls(true)), AuthSettings::default());
    s.security.grpc_health_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = spawn_app_with(s).await;
    let health_addr = app.grpc_health_addr.expect("bound");

    let status = HealthClient::new(plaintext_channel(health_addr))
        .check(HealthCheckRequest::default())
        .await
        .expect("plaintext health")
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");
    let api = ChargeServiceClient::new(plaintext_channel(health_addr))
        .list_order_charges(list_charges("1"))
        .await
        .unwrap_err();
    assert_eq!(api.code(), Code::Unimplemented);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

// === one serve loop: TLS connections are aged, compressed and handshaken apart ===

/// A mutual-TLS channel presenting `identity`, over connections this test counts.
async fn counted_tls_channel(
    addr: SocketAddr,
    ca: &str,
    identity: &Pem,
) -> (Channel, Arc<AtomicUsize>) {
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost")
        .identity(Identity::from_pem(&identity.cert, &identity.key));
    let channel = Endpoint::from_static("https://localhost")
        .tls_config(tls)
        .unwrap()
        .connect_with_connector(connector)
        .await
        .expect("connect over TLS");
    (channel, connections)
}

/// Settings requiring callers, with mutual TLS and a policy letting the fulfiller
/// read and capture.
fn fulfiller_only(dr: &TestSandbox, files: &Files) -> Settings {
    std::fs::write(
        &files.policy,
        format!(
            "[[rules]]\nname = \"shipping\"\nidentities = [\"{FULFILLER}\"]\nallow = [\"read\", \"capture\"]\n"
        ),
    )
    .unwrap();
    secured(
        dr,
        Some(files.tls(true)),
        AuthSettings {
            policy_file: Some(files.policy.clone()),
            required: true,
            ..AuthSettings::default()
        },
    )
}

#[tokio::test]
async fn an_aged_tls_connection_gets_goaway_its_capture_finishes_and_the_next_connection_names_the_caller_again(
) {
    // Arrange: captures wait for the test to settle them; connections age after
    // 400 ms; only the fulfiller's certificate may capture (anonymous calls are
    // refused), so a connection whose certificate did not reach the
    // authorization layer could not call at all.
    let dr = spawn_sandbox_with(SandboxConfig {
        settle: SettleMode::Stepped,
        ..SandboxConfig::default()
    })
    .await;
    let ca = Ca::new("cluster CA");
    let files = Files::new("aged", &ca.server(), &ca);
    let mut s = fulfiller_only(&dr, &files);
    s.grpc.max_connection_age = Some(Duration::from_millis(400));
    s.grpc.max_connection_age_grace = WAIT;
    let app = spawn_app_with(s).await;
    dr.control
        .add_webhook(&WebhookRegistration::new(webhook_url(&app)).secret(WEBHOOK_SECRET))
        .await
        .unwrap();
    let (order_id, item_id) = order(&dr).await;
    let (channel, connections) =
        counted_tls_channel(app.grpc_addr, &ca.pem(), &ca.client(FULFILLER)).await;
    let mut charges = ChargeServiceClient::new(channel.clone());
    let capture_call = {
        let mut charges = charges.clone();
        let request = pb::CaptureItemsRequest {
            wait: true,
            ..capture(&order_id, &item_id, "ship-aged")
        };
        tokio::spawn(async move {
            charges
                .capture_items(with_deadline(request, Duration::from_secs(30)))
                .await
                .map(tonic::Response::into_inner)
        })
    };
    eventually("the capture is pending at DR", || {
        let control = dr.control.clone();
        async move { !control.pending().await.unwrap().is_empty() }
    })
    .await;

    // Act: the connection ages; the client opens a new TLS connection for its
    // next calls; then DR settles the capture still running on the old one.
    eventually("the client reconnected after GOAWAY", || {
        let mut health = HealthClient::new(channel.clone());
        let connections = connections.clone();
        async move {
            let _ = health.check(HealthCheckRequest::default()).await;
            connections.load(Ordering::SeqCst) >= 2
        }
    })
    .await;
    let read_on_the_new_connection = charges.list_order_charges(list_charges(&order_id)).await;
    dr.control.settle().await.unwrap();
    let captured = tokio::time::timeout(WAIT, capture_call)
        .await
        .expect("the call in flight at GOAWAY finished")
        .unwrap();

    // Assert
    read_on_the_new_connection.expect("the new connection's certificate names the caller");
    let captured = captured.expect("the call in flight at GOAWAY succeeded");
    assert!(captured.settled, "{captured:?}");
    let held = dr_fulfillments(&dr.base_url(), &order_id).await;
    assert_eq!(held.len(), 1, "one fulfillment at DR");
    assert_eq!(held[0]["metadata"]["caller"], FULFILLER);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn compressed_calls_over_mutual_tls_pass_the_authorization_layer_and_are_answered_in_kind() {
    let dr = spawn_sandbox().await;
    let ca = Ca::new("cluster CA");
    let files = Files::new("compressed", &ca.server(), &ca);
    let app = spawn_app_with(fulfiller_only(&dr, &files)).await;
    let (order_id, _) = order(&dr).await;
    let channel = tls_channel(app.grpc_addr, &ca.pem(), Some(&ca.client(FULFILLER)))
        .await
        .unwrap();

    for (encoding, name) in [
        (CompressionEncoding::Gzip, "gzip"),
        (CompressionEncoding::Deflate, "deflate"),
        (CompressionEncoding::Zstd, "zstd"),
    ] {
        let response = ChargeServiceClient::new(channel.clone())
            .send_compressed(encoding)
            .accept_compressed(encoding)
            .list_order_charges(list_charges(&order_id))
            .await
            .unwrap_or_else(|e| panic!("{name}-compressed call over TLS refused: {e:?}"));
        let answered = response
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(answered.as_deref(), Some(name));
        assert_eq!(response.into_inner().order_id, order_id);
    }
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_tls_handshake_holds_up_no_other_client() {
    let dr = spawn_sandbox().await;
    let ca = Ca::new("server CA");
    let files = Files::new("stalled", &ca.server(), &ca);
    let app = spawn_app_with(secured(
        &dr,
        Some(files.tls(false)),
        AuthSettings::default(),
    ))
    .await;

    // Connections that never say a word: each handshake waits (for up to
    // defaults::TLS_HANDSHAKE_TIMEOUT, 10 s) in a task of its own.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(app.grpc_addr).await.unwrap());
    }
    let served = tokio::time::timeout(
        Duration::from_secs(5),
        health_over(app.grpc_addr, &ca.pem(), None),
    )
    .await;

    assert!(
        matches!(served, Ok(true)),
        "a TLS client behind stalled handshakes was not served in time: {served:?}"
    );
    drop(silent);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

#[tokio::test]
async fn while_nats_is_away_the_health_only_listener_reports_each_service_as_the_tls_port_does() {
    // Arrange: TLS, the plaintext health-only listener, and a bus nothing listens on.
    let dr = spawn_sandbox().await;
    let ca = Ca::new("server CA");
    let files = Files::new("health-bus", &ca.server(), &ca);
    let mut s = secured(&dr, Some(files.tls(false)), AuthSettings::default());
    s.security.grpc_health_addr = Some("127.0.0.1:0".parse().unwrap());
    let unused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut bus = BusConfig::new(vec![format!("nats://127.0.0.1:{unused_port}")]);
    bus.startup_timeout = Duration::from_millis(100);
    s.bus = Some(bus);
    let app = spawn_app_with(s).await;
    let (order_id, item_id) = order(&dr).await;
    let tls = tls_channel(app.grpc_addr, &ca.pem(), None).await.unwrap();
    let plaintext = plaintext_channel(app.grpc_health_addr.expect("bound"));

    // Act
    let mut on_tls_port = Vec::new();
    let mut on_health_port = Vec::new();
    for name in HEALTH_NAMES {
        for (channel, statuses) in [(&tls, &mut on_tls_port), (&plaintext, &mut on_health_port)] {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: (*name).into(),
                })
                .await
                .unwrap_or_else(|e| panic!("health of {name:?}: {e:?}"))
                .into_inner()
                .status;
            statuses.push(status);
        }
    }
    let refused = ChargeServiceClient::new(tls.clone())
        .capture_items(capture(&order_id, &item_id, "ship-1"))
        .await
        .unwrap_err();

    // Assert: the same answers on both ports: ready (reads need only DR), the
    // EventStream NOT_SERVING; a capture with a request_id is refused before DR.
    assert_eq!(on_health_port, on_tls_port);
    let (serving, not_serving) = (1, 2);
    assert_eq!(
        on_tls_port,
        [serving, serving, serving, not_serving],
        "{HEALTH_NAMES:?}"
    );
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "GATEWAY_DEPENDENCY_UNAVAILABLE"
    );
    assert!(dr_fulfillments(&dr.base_url(), &order_id).await.is_empty());
    app.stop().await;
    dr.sandbox.shutdown().await;
}

/// Opens a Consume stream as `token`'s caller and sends `start`; the stream of
/// responses, or the status the gateway refused it with.
async fn consume_as(
    channel: Channel,
    token: &str,
    start: pb::ConsumeStart,
) -> Result<tonic::Streaming<pb::ConsumeResponse>, tonic::Status> {
    let requests = futures::stream::iter([pb::ConsumeRequest {
        start: Some(start),
        ..Default::default()
    }])
    .chain(futures::stream::pending());
    tokio::time::timeout(
        WAIT,
        EventStreamClient::new(channel).consume(with_token(requests, token)),
    )
    .await
    .expect("Consume answered in time")
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_subscriber_joins_and_reads_consumer_groups_but_only_manage_groups_deletes_one() {
    const NOTIFIER: &str = "tok_notifier_5a4b3c2d1e0f99887766554433221100";
    const OPERATOR: &str = "tok_operator_00112233445566778899aabbccddeeff";
    const REPORTS: &str = "tok_reports_ffeeddccbbaa99887766554433221100";
    let dr = spawn_sandbox().await;
    let ca = Ca::new("server CA");
    let files = Files::new("groups-policy", &ca.server(), &ca);
    std::fs::write(
        &files.tokens,
        token_entry("notifier", NOTIFIER)
            + &token_entry("operator", OPERATOR)
            + &token_entry("reports", REPORTS),
    )
    .unwrap();
    std::fs::write(
        &files.policy,
        "[[rules]]\nname = \"notifier\"\nidentities = [\"token:notifier\"]\nallow = [\"subscribe\"]\n\
         [[rules]]\nname = \"operator\"\nidentities = [\"token:operator\"]\nallow = [\"manage_groups\"]\n\
         [[rules]]\nname = \"reports\"\nidentities = [\"token:reports\"]\nallow = [\"read\"]\n",
    )
    .unwrap();
    let auth = AuthSettings {
        tokens_file: Some(files.tokens.clone()),
        policy_file: Some(files.policy.clone()),
        required: true,
    };
    let app = spawn_app_with(secured(&dr, Some(files.tls(false)), auth)).await;
    let channel = tls_channel(app.grpc_addr, &ca.pem(), None).await.unwrap();
    let mut events = EventStreamClient::new(channel.clone());
    let group_id = "notifier-emails-auth";
    let start = pb::ConsumeStart {
        group_id: group_id.into(),
        member_name: "notifier-1".into(),
        create: Some(pb::ConsumerGroupSettings::default()),
        ..Default::default()
    };
    let delete = || pb::DeleteConsumerGroupRequest {
        group_id: group_id.into(),
    };

    // A reader may not join (the layer refuses the bidirectional stream up front).
    let refused = consume_as(channel.clone(), REPORTS, start.clone())
        .await
        .expect_err("a reader does not join a group");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.get_details_error_info().unwrap().metadata["method"],
        "/digitalriver.gateway.v1.EventStream/Consume"
    );

    // A subscriber joins (creating the group), reads it, and may not delete it.
    let mut member = consume_as(channel.clone(), NOTIFIER, start)
        .await
        .expect("a subscriber joins");
    let first = tokio::time::timeout(WAIT, member.message())
        .await
        .expect("started in time")
        .unwrap()
        .unwrap();
    let Some(pb::consume_response::Kind::Started(started)) = first.kind else {
        panic!("not started: {first:?}");
    };
    assert!(started.created);
    let group = events
        .get_consumer_group(with_token(
            pb::GetConsumerGroupRequest {
                group_id: group_id.into(),
            },
            NOTIFIER,
        ))
        .await
        .expect("a subscriber reads its group")
        .into_inner();
    assert_eq!(group.group.unwrap().members.len(), 1);
    let not_allowed = events
        .delete_consumer_group(with_token(delete(), NOTIFIER))
        .await
        .unwrap_err();
    assert_eq!(not_allowed.code(), Code::PermissionDenied);
    assert_eq!(
        not_allowed.get_details_error_info().unwrap().reason,
        "METHOD_NOT_ALLOWED"
    );
    assert!(
        captured_logs().lines().any(|l| l.contains("member joined")
            && l.contains(group_id)
            && l.contains("token:notifier")),
        "the join is logged with the caller"
    );

    // Only manage_groups deletes it: the member's stream then ends NOT_FOUND.
    events
        .delete_consumer_group(with_token(delete(), OPERATOR))
        .await
        .expect("an operator deletes the group");
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match member.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended OK"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the member's stream ended");
    assert_eq!(ended.code(), Code::NotFound);
    assert_eq!(
        ended.get_details_error_info().unwrap().reason,
        "CONSUMER_GROUP_DELETED"
    );
    assert_no_secrets_in_logs(&[NOTIFIER, OPERATOR, REPORTS]);
    app.stop().await;
    dr.sandbox.shutdown().await;
}

// === the telemetry layers run inside the serve loop on both listeners ===

/// `message` with `x-request-id: id`.
fn with_request_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

/// The access log line of the call with request id `id`.
async fn access_line(id: &str) -> String {
    let needle = format!("request_id=\"{id}\"");
    crate::observability_support::eventually(&format!("the access line of {id}"), || {
        let line = captured_logs()
            .lines()
            .find(|l| l.contains("dr_gateway::access") && l.contains(&needle))
            .map(str::to_owned);
        async move { line }
    })
    .await
}

#[tokio::test]
async fn calls_over_mutual_tls_and_on_the_health_only_listener_are_in_the_access_log_with_caller_and_peer(
) {
    let dr = spawn_sandbox().await;
    let ca = Ca::new("cluster CA");
    let files = Files::new("access-tls", &ca.server(), &ca);
    let mut s = secured(&dr, Some(files.tls(true)), AuthSettings::default());
    s.security.grpc_health_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = spawn_app_with(s).await;
    let client = ca.client("spiffe://cluster.local/ns/shop/sa/access-log");
    let channel = tls_channel(app.grpc_addr, &ca.pem(), Some(&client))
        .await
        .expect("mutual TLS");

    let request_id = format!("tls-{}", uuid::Uuid::new_v4());
    let answer = ChargeServiceClient::new(channel)
        .list_order_charges(with_request_id(list_charges("no-such-order"), &request_id))
        .await;
    let returned = match &answer {
        Ok(r) => r.metadata().get("x-request-id").cloned(),
        Err(status) => status.metadata().get("x-request-id").cloned(),
    };
    assert_eq!(
        returned.as_ref().and_then(|v| v.to_str().ok()),
        Some(request_id.as_str()),
        "the TLS path returns the request id"
    );
    let line = access_line(&request_id).await;
    assert!(
        line.contains("spiffe://cluster.local/ns/shop/sa/access-log"),
        "the certificate's identity is the caller: {line}"
    );
    assert!(
        line.contains("peer=\"127.0.0.1:"),
        "the TLS connection's peer: {line}"
    );

    // The health-only listener: plaintext, no authorization, the same layers.
    let health_id = format!("health-{}", uuid::Uuid::new_v4());
    let refused = ChargeServiceClient::new(plaintext_channel(app.grpc_health_addr.expect("bound")))
        .list_order_charges(with_request_id(list_charges("1"), &health_id))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented);
    let line = access_line(&health_id).await;
    assert!(line.contains("grpc.code=\"Unimplemented\""), "{line}");
    assert!(line.contains("caller=anonymous"), "{line}");
    app.stop().await;
    dr.sandbox.shutdown().await;
}
