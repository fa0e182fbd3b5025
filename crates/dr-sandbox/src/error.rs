//! Errors: DR-shaped API errors (what a caller of the emulated API sees) and the
//! start-up error of the sandbox itself.
//!
//! DR error body (docs/digital-river.md §5.1): `{"type": "...", "errors": [{"code", "parameter"?, "message"}]}`.
//! One quirk is reproduced on purpose: `payment_authorization_failed` has no `type` and says
//! `description` instead of `message` (DR's "Payment reauthorizations" page).

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{json, Map, Value};

/// Failure to start the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The listen address could not be bound.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client used for webhook delivery could not be built.
    #[error("cannot build the webhook HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// The server stopped with an I/O error.
    #[error("sandbox server failed")]
    Serve(#[source] std::io::Error),
}

/// One entry of a DR error body.
#[derive(Debug, Clone)]
pub(crate) struct ErrorEntry {
    code: String,
    parameter: Option<String>,
    message: String,
}

/// A DR-shaped error response.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    /// `None` renders a body without `type` (DR's "Payment reauthorizations" page quirk).
    kind: Option<&'static str>,
    errors: Vec<ErrorEntry>,
    /// Render `description` instead of `message` (DR's "Payment reauthorizations" page quirk).
    use_description: bool,
    retry_after: Option<u64>,
}

/// The DR `type` for an HTTP status (PHP SDK `Errors::TYPE_*`, docs/digital-river.md §5.1).
pub(crate) fn type_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "request_timeout",
        409 => "conflict",
        429 => "too_many_requests",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ => "internal_server_error",
    }
}

impl ApiError {
    /// An error with one entry; `type` follows the status.
    pub(crate) fn new(
        status: StatusCode,
        code: &str,
        parameter: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind: Some(type_for_status(status)),
            errors: vec![ErrorEntry {
                code: code.to_owned(),
                parameter: parameter.map(str::to_owned),
                message: message.into(),
            }],
            use_description: false,
            retry_after: None,
        }
    }

    /// 400 `missing_parameter`.
    pub(crate) fn missing(parameter: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "missing_parameter",
            Some(parameter),
            format!("'{parameter}' is required."),
        )
    }

    /// 400 `invalid_parameter`.
    pub(crate) fn invalid(parameter: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some(parameter),
            message,
        )
    }

    /// 400 `invalid_request` for a body that is not a JSON object.
    pub(crate) fn bad_body(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("body"),
            message,
        )
    }

    /// 404 `not_found` for a resource id.
    pub(crate) fn not_found(parameter: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", Some(parameter), message)
    }

    /// 409 with the given code.
    pub(crate) fn conflict(
        code: &str,
        parameter: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StatusCode::CONFLICT, code, parameter, message)
    }

    /// 409 `payment_authorization_failed`, exactly as DR's "Payment reauthorizations" page prints it.
    pub(crate) fn payment_authorization_failed() -> Self {
        Self {
            status: StatusCode::CONFLICT,
            // why: the "Payment reauthorizations" page's body has no `type` and uses `description` (docs/digital-river.md §1.6).
            kind: None,
            errors: vec![ErrorEntry {
                code: "payment_authorization_failed".to_owned(),
                parameter: Some("orderId".to_owned()),
                message:
                    "Fulfillment cannot be processed because the payment authorization has expired"
                        .to_owned(),
            }],
            use_description: true,
            retry_after: None,
        }
    }

    /// Adds `Retry-After: <seconds>`.
    pub(crate) fn with_retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after = seconds;
        self
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> Value {
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("code".into(), json!(e.code));
                if let Some(p) = &e.parameter {
                    m.insert("parameter".into(), json!(p));
                }
                let key = if self.use_description {
                    "description"
                } else {
                    "message"
                };
                m.insert(key.into(), json!(e.message));
                Value::Object(m)
            })
            .collect();
        let mut body = Map::new();
        if let Some(kind) = self.kind {
            body.insert("type".into(), json!(kind));
        }
        body.insert("errors".into(), Value::Array(errors));
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
