//! Who a caller is: an [`Identity`] read from a verified client certificate or named
//! by a bearer token, and the [`Caller`] the authorization layer puts into each
//! request's extensions (handlers read it for DR's `metadata.caller`; the access log
//! and metrics read it too).
//!
//! Identities are written the same way in the policy file, in logs and in DR's
//! metadata:
//! - a certificate's first URI SAN as it is, e.g. a SPIFFE id
//!   `spiffe://cluster.local/ns/shipping/sa/fulfiller`;
//! - else its first DNS SAN as `dns:<name>`, e.g. `dns:fulfiller.shipping.svc`;
//! - a bearer token's name from the token file as `token:<name>`.
//!
//! A certificate's URI SAN in the `dns:` or `token:` scheme is not taken as an
//! identity, so no certificate can pass for a token or a DNS name it does not carry.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A caller's identity (see the module docs for its forms).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity(Arc<str>);

/// Prefix of identities named by a DNS SAN.
pub const DNS_PREFIX: &str = "dns:";
/// Prefix of identities named by a bearer token.
pub const TOKEN_PREFIX: &str = "token:";

impl Identity {
    /// The identity as written in the policy (`spiffe://…`, `dns:…`, `token:…`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identity of the token named `name` in the token file.
    pub fn token(name: &str) -> Self {
        Self(format!("{TOKEN_PREFIX}{name}").into())
    }

    /// The identity a verified client certificate (DER, leaf) names: its first URI
    /// SAN, else its first DNS SAN.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Self, NoIdentity> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|_| NoIdentity)?;
        let san = cert
            .subject_alternative_name()
            .map_err(|_| NoIdentity)?
            .ok_or(NoIdentity)?;
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|name| match name {
            GeneralName::URI(uri)
                if !uri.starts_with(DNS_PREFIX) && !uri.starts_with(TOKEN_PREFIX) =>
            {
                Some(*uri)
            }
            _ => None,
        });
        if let Some(uri) = uri {
            return Ok(Self(uri.into()));
        }
        names
            .iter()
            .find_map(|name| match name {
                GeneralName::DNSName(dns) => Some(Self(format!("{DNS_PREFIX}{dns}").into())),
                _ => None,
            })
            .ok_or(NoIdentity)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The client certificate names neither a URI nor a DNS SAN the gateway can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client certificate names no URI or DNS subject alternative name")]
pub struct NoIdentity;

/// The policy label of a caller that presented no credentials.
pub const ANONYMOUS: &str = "anonymous";
/// The policy label of an identified caller when no policy is configured.
pub const AUTHENTICATED: &str = "authenticated";
/// The policy label of an identified caller that no policy rule names.
pub const UNLISTED: &str = "unlisted";

/// The caller of one request, as the authorization layer established it.
///
/// Found in the request's extensions (handlers: [`Caller::of`]) and in the response's
/// (layers outside the authorization layer, e.g. an access log:
/// [`Caller::from_extensions`]); a denied call's response carries it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    identity: Option<Identity>,
    policy_name: Arc<str>,
}

impl Caller {
    /// A caller with `identity` (none: anonymous) matched to the policy rule
    /// `policy_name` (or one of [`ANONYMOUS`], [`AUTHENTICATED`], [`UNLISTED`]).
    pub fn new(identity: Option<Identity>, policy_name: impl Into<Arc<str>>) -> Self {
        Self {
            identity,
            policy_name: policy_name.into(),
        }
    }

    /// The caller's identity; `None` for an anonymous caller.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// A bounded label for metrics: the name of the policy rule that admitted the
    /// caller, or [`ANONYMOUS`], [`AUTHENTICATED`] (no policy) or [`UNLISTED`]. Never
    /// the raw identity, so the label's values are as few as the policy's rules.
    pub fn policy_name(&self) -> &str {
        &self.policy_name
    }

    /// The caller of a gRPC request (set by the authorization layer).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Caller> {
        request.extensions().get::<Caller>()
    }

    /// The identity of a gRPC request's caller as text (DR's `metadata.caller`);
    /// `None` for an anonymous caller.
    pub fn identity_of<T>(request: &tonic::Request<T>) -> Option<String> {
        Self::of(request)
            .and_then(Caller::identity)
            .map(|i| i.as_str().to_owned())
    }

    /// The caller recorded in HTTP request or response extensions.
    pub fn from_extensions(extensions: &http::Extensions) -> Option<&Caller> {
        extensions.get::<Caller>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with(sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.try_into().unwrap())
    }

    fn dns(text: &str) -> SanType {
        SanType::DnsName(text.try_into().unwrap())
    }

    #[test]
    fn a_uri_san_wins_over_a_dns_san() {
        let cert = cert_with(vec![
            dns("fulfiller.shipping.svc"),
            uri("spiffe://cluster.local/ns/shipping/sa/fulfiller"),
        ]);
        assert_eq!(
            Identity::from_certificate(&cert).unwrap().as_str(),
            "spiffe://cluster.local/ns/shipping/sa/fulfiller"
        );
    }

    #[test]
    fn a_dns_san_names_the_caller_without_a_uri_san() {
        let cert = cert_with(vec![dns("fulfiller.shipping.svc"), dns("other")]);
        assert_eq!(
            Identity::from_certificate(&cert).unwrap().as_str(),
            "dns:fulfiller.shipping.svc"
        );
    }

    #[test]
    fn a_certificate_cannot_pass_for_a_token_or_a_dns_name() {
        let cert = cert_with(vec![uri("token:admin"), uri("dns:admin")]);
        assert_eq!(Identity::from_certificate(&cert), Err(NoIdentity));
        let cert = cert_with(vec![uri("token:admin"), dns("real.svc")]);
        assert_eq!(
            Identity::from_certificate(&cert).unwrap().as_str(),
            "dns:real.svc"
        );
    }

    #[test]
    fn a_certificate_without_sans_or_garbage_names_no_one() {
        assert_eq!(
            Identity::from_certificate(&cert_with(vec![])),
            Err(NoIdentity)
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert_eq!(Identity::from_certificate(&garbage), Err(NoIdentity));
    }
}
