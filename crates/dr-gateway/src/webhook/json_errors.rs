//! Gives every answer of the webhook listener the JSON error shape: the ones axum
//! makes itself (404, 405, a rejection's text) are rewritten; JSON answers pass
//! unchanged.
//!
//! A tower service around the whole router, so the answers of routes merged in
//! later (`/metrics`) and the fallback of the merged router get the shape too.
//!
//! why: as axum's `map_response` middleware, it wrapped every route in a second
//! boxed route (a boxed service cloned and a boxed future per request) and ran on
//! every answer; here it wraps the router once and costs nothing on a JSON answer
//! (`cargo bench --bench webhook_intake`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use pin_project_lite::pin_project;
use serde_json::json;
use tower::Service;

/// `inner`, with its error answers in the JSON shape (see the module docs).
#[derive(Debug, Clone)]
pub struct JsonErrors<S> {
    inner: S,
}

impl<S> JsonErrors<S> {
    /// Wraps `inner` (the listener's router).
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<Request> for JsonErrors<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = JsonAnswer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        JsonAnswer {
            inner: self.inner.call(request),
            rewriting: None,
        }
    }
}

/// The rewrite of one answer (it reads axum's text from the answer's body).
type Rewrite = Pin<Box<dyn Future<Output = Response> + Send>>;

pin_project! {
    /// An answer on its way: passed on as it is, or rewritten when axum made it.
    pub struct JsonAnswer<F> {
        #[pin]
        inner: F,
        rewriting: Option<Rewrite>,
    }
}

impl<F> Future for JsonAnswer<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(rewrite) = this.rewriting.as_mut() {
            return rewrite.as_mut().poll(cx).map(Ok);
        }
        let response = match std::task::ready!(this.inner.poll(cx)) {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if !needs_json_body(&response) {
            return Poll::Ready(Ok(response));
        }
        let mut rewrite: Rewrite = Box::pin(json_error_body(response));
        let answer = rewrite.as_mut().poll(cx);
        *this.rewriting = Some(rewrite);
        answer.map(Ok)
    }
}

/// An error answer that is not JSON yet.
fn needs_json_body(response: &Response) -> bool {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    (status.is_client_error() || status.is_server_error()) && !is_json
}

/// The answer in the JSON shape of the listener's own errors, its text kept as the
/// message.
async fn json_error_body(response: Response) -> Response {
    let status = response.status();
    let (mut parts, body) = response.into_parts();
    // why: axum's own texts are short; a cap keeps a surprise from growing the answer.
    let text = axum::body::to_bytes(body, 1024).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let body =
        serde_json::to_vec(&json!({ "error": code, "message": message })).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt as _;

    use super::*;

    async fn answer(path: &str) -> (StatusCode, String, String) {
        let router = Router::new()
            .route(
                "/text-error",
                get(|| async { (StatusCode::CONFLICT, "taken") }),
            )
            .route("/text-ok", get(|| async { "fine" }))
            .route(
                "/json-error",
                get(|| async {
                    (
                        StatusCode::BAD_REQUEST,
                        axum::Json(json!({ "error": "own", "message": "kept" })),
                    )
                }),
            );
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = JsonErrors::new(router).oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn error_answers_axum_made_become_json_and_the_rest_pass_unchanged() {
        let (status, content_type, body) = answer("/text-error").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(content_type, "application/json");
        assert_eq!(body, r#"{"error":"bad_request","message":"taken"}"#);

        let (status, content_type, body) = answer("/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(content_type, "application/json");
        assert_eq!(body, r#"{"error":"not_found","message":"Not Found"}"#);

        assert_eq!(answer("/text-ok").await.2, "fine");
        assert_eq!(
            answer("/json-error").await.2,
            r#"{"error":"own","message":"kept"}"#
        );
    }
}
