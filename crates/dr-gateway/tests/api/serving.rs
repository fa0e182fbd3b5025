//! Health, reflection, shutdown, and secrets staying out of logs.

use std::time::Duration;

use dr_gateway::pb::v1 as pb;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1 as reflection_v1;
use tonic_reflection::pb::v1alpha as reflection_v1alpha;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{captured_logs, spawn_app, API_KEY};

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let dr = MockServer::start().await;
    let app = spawn_app(&dr.uri()).await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in [
        "",
        "digitalriver.gateway.v1.FulfillmentService",
        "digitalriver.gateway.v1.ChargeService",
        "digitalriver.gateway.v1.EventStream",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn health_turns_not_serving_as_soon_as_shutdown_starts() {
    let dr = MockServer::start().await;
    let app = spawn_app(&dr.uri()).await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    app.shutdown_now();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("health changes before the deadline")
        .expect("an update")
        .expect("ok");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    app.stop().await;
}

#[tokio::test]
async fn reflection_lists_services_over_v1_and_v1alpha() {
    let dr = MockServer::start().await;
    let app = spawn_app(&dr.uri()).await;

    let mut v1 =
        reflection_v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let req = reflection_v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection_v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = v1
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap();
    let Some(reflection_v1::server_reflection_response::MessageResponse::ListServicesResponse(
        list,
    )) = response.message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "digitalriver.gateway.v1.FulfillmentService",
        "digitalriver.gateway.v1.ChargeService",
        "digitalriver.gateway.v1.EventStream",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    let mut alpha = reflection_v1alpha::server_reflection_client::ServerReflectionClient::new(
        app.channel.clone(),
    );
    let req = reflection_v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection_v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "digitalriver.gateway.v1.FulfillmentService".into(),
            ),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap();
    let Some(
        reflection_v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            files,
        ),
    ) = response.message_response
    else {
        panic!("expected file descriptors");
    };
    use prost::Message;
    let file = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .find(|f| f.service.iter().any(|s| s.name() == "FulfillmentService"))
        .expect("the service's file");
    let comments = file
        .source_code_info
        .expect("source info kept for describe")
        .location
        .iter()
        .filter_map(|l| l.leading_comments.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        comments.contains("POST /fulfillments"),
        "doc comments reach grpcurl describe"
    );
    app.stop().await;
}

/// One v1alpha reflection request (the protocol grpcurl 1.8 speaks) and its answer.
async fn reflect_v1alpha(
    channel: &tonic::transport::Channel,
    request: reflection_v1alpha::server_reflection_request::MessageRequest,
) -> reflection_v1alpha::server_reflection_response::MessageResponse {
    let mut client =
        reflection_v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = reflection_v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection call")
        .into_inner();
    stream
        .next()
        .await
        .expect("one answer")
        .expect("reflection answer")
        .message_response
        .expect("a message response")
}

/// The files of a FileDescriptorResponse, decoded.
fn reflected_files(
    response: reflection_v1alpha::server_reflection_response::MessageResponse,
) -> Vec<prost_types::FileDescriptorProto> {
    use prost::Message;
    let reflection_v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
        files,
    ) = response
    else {
        panic!("expected file descriptors, got {response:?}");
    };
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a file"))
        .collect()
}

#[tokio::test]
async fn reflection_describes_the_google_rpc_error_details_and_everything_they_import() {
    use reflection_v1alpha::server_reflection_request::MessageRequest;
    let dr = MockServer::start().await;
    let app = spawn_app(&dr.uri()).await;

    for (symbol, file_name, import) in [
        (
            "google.rpc.ErrorInfo",
            "google/rpc/error_details.proto",
            "google/protobuf/duration.proto",
        ),
        (
            "google.rpc.Status",
            "google/rpc/status.proto",
            "google/protobuf/any.proto",
        ),
    ] {
        // `grpcurl describe google.rpc.ErrorInfo` asks for the file holding the symbol…
        let files = reflected_files(
            reflect_v1alpha(
                &app.channel,
                MessageRequest::FileContainingSymbol(symbol.into()),
            )
            .await,
        );
        let file = files
            .iter()
            .find(|f| f.name() == file_name)
            .unwrap_or_else(|| panic!("{file_name} for {symbol} among {files:?}"));
        let message = symbol.rsplit('.').next().expect("a simple name");
        assert!(
            file.message_type.iter().any(|m| m.name() == message),
            "{symbol} in {file_name}"
        );
        assert!(
            file.dependency.iter().any(|d| d == import),
            "{file_name} imports {import}"
        );

        // …then for each import by name, and by its canonical name the file is found too.
        for name in [import, file_name] {
            let files = reflected_files(
                reflect_v1alpha(&app.channel, MessageRequest::FileByFilename(name.into())).await,
            );
            assert!(
                files.iter().any(|f| f.name() == name),
                "{name} by file name"
            );
        }
    }

    // The details the gateway sends are all there.
    let files = reflected_files(
        reflect_v1alpha(
            &app.channel,
            MessageRequest::FileByFilename("google/rpc/error_details.proto".into()),
        )
        .await,
    );
    let details: Vec<&str> = files
        .iter()
        .find(|f| f.name() == "google/rpc/error_details.proto")
        .expect("error_details.proto")
        .message_type
        .iter()
        .map(|m| m.name())
        .collect();
    for detail in [
        "ErrorInfo",
        "BadRequest",
        "PreconditionFailure",
        "ResourceInfo",
        "RetryInfo",
        "QuotaFailure",
    ] {
        assert!(details.contains(&detail), "{detail} in {details:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn v1_reflection_describes_the_google_rpc_error_details_too() {
    let dr = MockServer::start().await;
    let app = spawn_app(&dr.uri()).await;
    let mut v1 =
        reflection_v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let req = reflection_v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection_v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "google.rpc.RetryInfo".into(),
            ),
        ),
    };
    let mut stream = v1
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap();
    let Some(reflection_v1::server_reflection_response::MessageResponse::FileDescriptorResponse(
        files,
    )) = response.message_response
    else {
        panic!("expected file descriptors");
    };
    use prost::Message;
    let names: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| {
            prost_types::FileDescriptorProto::decode(bytes.as_slice())
                .unwrap()
                .name()
                .to_owned()
        })
        .collect();
    assert!(
        names.iter().any(|n| n == "google/rpc/error_details.proto"),
        "{names:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_api_key_never_appears_in_logs_errors_or_debug_output() {
    let dr = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"errors": [{"message": "bad key"}]})),
        )
        .mount(&dr)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("not json"))
        .mount(&dr)
        .await;
    let mut app = spawn_app(&dr.uri()).await;
    let status = app
        .charges
        .get_charge(pb::GetChargeRequest {
            charge_id: "c1".into(),
        })
        .await
        .unwrap_err();
    assert!(!format!("{status:?}").contains(API_KEY));
    let status = app
        .fulfillments
        .create_fulfillment(pb::CreateFulfillmentRequest {
            order_id: "o".into(),
            items: vec![pb::CreateFulfillmentItem {
                item_id: "i".into(),
                quantity: 1,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(!format!("{status:?}").contains(API_KEY));

    // the key did reach DR (so it was really in play) ...
    let sent = dr.received_requests().await.unwrap();
    assert!(sent.iter().all(
        |r| r.headers.get("authorization").unwrap().to_str().unwrap()
            == format!("Bearer {API_KEY}")
    ));
    // ... but not any log line (TRACE, every crate) or the settings' Debug output
    let logs = captured_logs();
    assert!(
        logs.contains("DR answered with an error"),
        "logs were captured"
    );
    assert!(
        !logs.contains("TOPSECRET"),
        "the API key leaked into the logs"
    );
    let settings = dr_gateway::config::Settings::for_upstream(dr.uri(), API_KEY);
    assert!(!format!("{settings:?}").contains("TOPSECRET"));
    app.stop().await;
}
