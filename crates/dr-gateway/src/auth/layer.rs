//! [`AuthLayer`]: the tower layer in front of every gRPC service that establishes the
//! caller and applies the policy before any handler runs.
//!
//! It reads the method from the request path, the bearer token from `authorization`
//! (then removes the header, so no handler or log below sees it) and the verified
//! client certificates from the connection (tonic's `TlsConnectInfo`). An allowed
//! call gets its [`Caller`] in the request extensions; a refused one is answered
//! here with UNAUTHENTICATED or PERMISSION_DENIED (grpc/status.rs) and logged at
//! INFO. Both responses carry the [`Caller`] in their extensions, for layers outside
//! this one (access log, metrics).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::{Authorizer, Caller};

/// Applies the [`Authorizer`] to every request.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authorizer: Arc<Authorizer>,
}

impl AuthLayer {
    /// A layer deciding with `authorizer`.
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        Self { authorizer }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authorizer: self.authorizer.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the gRPC routes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let certificates = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let decision = self.authorizer.authorize(
            request.uri().path(),
            request.headers().get(AUTHORIZATION).map(|v| v.as_bytes()),
            certificates.as_deref().map(Vec::as_slice),
        );
        // why: the token has done its job; nothing below (handlers, traces of
        // metadata) needs to hold it.
        request.headers_mut().remove(AUTHORIZATION);
        match decision {
            Ok(caller) => {
                request.extensions_mut().insert(caller.clone());
                let response = self.inner.call(request);
                Box::pin(async move {
                    let mut response = response.await?;
                    response.extensions_mut().insert(caller);
                    Ok(response)
                })
            }
            Err(denial) => {
                tracing::info!(
                    method = %denial.method,
                    caller = denial.caller.identity().map(|i| i.as_str()).unwrap_or(super::identity::ANONYMOUS),
                    policy = denial.caller.policy_name(),
                    reason = denial.reason.as_str(),
                    "call refused"
                );
                let caller: Caller = denial.caller.clone();
                let status = tonic::Status::from(denial);
                let mut response = status.into_http::<ResBody>();
                response.extensions_mut().insert(caller);
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthSettings, Authorizer};
    use std::convert::Infallible;
    use tower::ServiceExt;

    const CAPTURE: &str = "/digitalriver.gateway.v1.ChargeService/CaptureItems";

    fn layer(policy: &str, tokens: &str) -> AuthLayer {
        let dir = std::env::temp_dir().join(format!(
            "drgw-layer-{}-{}",
            std::process::id(),
            policy.len() + tokens.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        std::fs::write(dir.join("tokens.txt"), tokens).unwrap();
        let authorizer = Authorizer::load(AuthSettings {
            tokens_file: Some(dir.join("tokens.txt")),
            policy_file: Some(dir.join("policy.toml")),
            required: true,
        })
        .unwrap();
        let _ = std::fs::remove_dir_all(dir);
        AuthLayer::new(Arc::new(authorizer))
    }

    /// What the wrapped service saw: the caller and whether a token reached it.
    fn inner() -> impl Service<
        http::Request<()>,
        Response = http::Response<String>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(|request: http::Request<()>| async move {
            let caller = Caller::from_extensions(request.extensions()).cloned();
            let token_seen = request.headers().contains_key(AUTHORIZATION);
            Ok::<_, Infallible>(http::Response::new(format!(
                "{:?} {token_seen}",
                caller.map(|c| c.policy_name().to_owned())
            )))
        })
    }

    fn request(token: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(CAPTURE);
        if let Some(token) = token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        builder.body(()).unwrap()
    }

    #[tokio::test]
    async fn an_allowed_call_reaches_the_service_with_its_caller_and_without_the_token() {
        let entry =
            "shipping sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let policy =
            "[[rules]]\nname = 'shipping'\nidentities = ['token:shipping']\nallow = ['capture']\n";
        let service = layer(policy, entry).layer(inner());
        // sha256("test") is the digest above.
        let response = service.oneshot(request(Some("test"))).await.unwrap();
        assert_eq!(response.body(), "Some(\"shipping\") false");
        let caller = Caller::from_extensions(response.extensions()).unwrap();
        assert_eq!(caller.identity().unwrap().as_str(), "token:shipping");
        assert_eq!(caller.policy_name(), "shipping");
    }

    #[tokio::test]
    async fn a_refused_call_is_answered_here_with_the_status_and_the_caller() {
        let service = layer("", "").layer(inner());
        let response = service.oneshot(request(None)).await.unwrap();
        assert_eq!(response.body(), "", "the service was not called");
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let caller = Caller::from_extensions(response.extensions()).unwrap();
        assert_eq!(caller.policy_name(), "anonymous");
    }
}
