//! Callers are who they say: TLS, mutual TLS identities, bearer tokens, the
//! authorization policy (and its reload), and the caller on DR's fulfillment.

use std::path::PathBuf;
use std::time::Duration;

use dr_gateway::auth::AuthSettings;
use dr_gateway::config::Settings;
use dr_gateway::pb::v1 as pb;
use dr_gateway::pb::v1::charge_service_client::ChargeServiceClient;
use dr_gateway::pb::v1::event_stream_client::EventStreamClient;
use dr_gateway::tls::{ClientAuth, TlsSettings};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

use crate::event_support::{deliver, event, next_event, WAIT};
use crate::helpers::{captured_logs, settings, spawn_app_with, spawn_sandbox, TestSandbox};
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
