//! Who may call what: caller identities (client certificates, bearer tokens), the
//! authorization policy, and the tower layer that applies them to every gRPC call.
//!
//! - [`identity`]: [`Identity`] from a certificate or token; [`Caller`], which the
//!   layer puts into request (and response) extensions.
//! - [`tokens`]: the file of named, hashed bearer tokens.
//! - [`policy`]: the TOML policy file, the method groups.
//! - [`layer`]: [`AuthLayer`], in front of every gRPC service.
//!
//! [`Authorizer::authorize`] is the whole decision, in this order:
//! 1. Credentials: a bearer token (when a token file is configured) names the caller;
//!    an unknown or malformed one is UNAUTHENTICATED, even for open methods (a client
//!    that sends a wrong credential should learn so, not be served anonymously). Else
//!    a verified client certificate names the caller. Else the caller is anonymous.
//! 2. Methods the policy opens (health and reflection by default) are allowed to all.
//! 3. Anonymous callers: UNAUTHENTICATED with `--auth-required`; else allowed when no
//!    policy is loaded, or by the policy's `anonymous` rule; else UNAUTHENTICATED.
//! 4. Identified callers: allowed when no policy is loaded; else by the rule that
//!    names them, PERMISSION_DENIED if it does not allow the method or no rule does.
//!
//! The token file and the policy are reloaded when they change and apply to calls
//! that start afterwards; a Subscribe stream that is already open is not cut when a
//! new policy would deny it (it was authorized when it started; it ends as every
//! stream does, by the client, a deadline or shutdown).

pub mod identity;
pub mod layer;
pub mod policy;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

pub use identity::{Caller, Identity};
pub use layer::AuthLayer;
pub use policy::{Policy, PolicyError};
pub use tokens::{TokenFileError, TokenSet};

use crate::reload::{Reloadable, WatchedFiles};

/// Where the caller checks come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// File of named, hashed bearer tokens; `None`: tokens are not a credential.
    pub tokens_file: Option<PathBuf>,
    /// Policy file; `None`: every caller may call every method.
    pub policy_file: Option<PathBuf>,
    /// Anonymous callers get UNAUTHENTICATED (except for open methods).
    pub required: bool,
}

/// Why the token file or the policy cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file.
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    /// The policy file.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The reason.
    pub reason: DenialReason,
    /// The called method, `/package.Service/Method`.
    pub method: String,
    /// The caller as far as it was established (for logs and the access log).
    pub caller: Caller,
}

/// The reasons a call is refused (each is `ErrorInfo.reason` in upper snake case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialReason {
    /// No credentials, and the method needs them. UNAUTHENTICATED.
    CredentialsRequired,
    /// A bearer token that the token file does not list (or a malformed
    /// `authorization` header). UNAUTHENTICATED.
    InvalidToken,
    /// A verified client certificate that names no URI or DNS SAN. UNAUTHENTICATED.
    CertificateWithoutIdentity,
    /// The caller is identified but no policy rule names it. PERMISSION_DENIED.
    CallerNotInPolicy,
    /// The caller's rule does not allow the method. PERMISSION_DENIED.
    MethodNotAllowed,
}

impl DenialReason {
    /// `ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialsRequired => "CREDENTIALS_REQUIRED",
            Self::InvalidToken => "INVALID_TOKEN",
            Self::CertificateWithoutIdentity => "CERTIFICATE_WITHOUT_IDENTITY",
            Self::CallerNotInPolicy => "CALLER_NOT_IN_POLICY",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
        }
    }

    /// UNAUTHENTICATED (true) or PERMISSION_DENIED (false).
    pub fn is_unauthenticated(self) -> bool {
        matches!(
            self,
            Self::CredentialsRequired | Self::InvalidToken | Self::CertificateWithoutIdentity
        )
    }
}

/// The loaded token file and policy, and the decision of each call.
#[derive(Debug)]
pub struct Authorizer {
    settings: AuthSettings,
    tokens: Option<Reloadable<TokenSet>>,
    policy: Option<Reloadable<Policy>>,
    open_by_default: policy::Grants,
}

impl Authorizer {
    /// Loads the token file and policy named in `settings`; fails on anything
    /// unusable (the gateway then does not start).
    pub fn load(settings: AuthSettings) -> Result<Self, AuthError> {
        let tokens = match &settings.tokens_file {
            Some(path) => Some(Reloadable::new(TokenSet::load(path)?)),
            None => None,
        };
        let policy = match &settings.policy_file {
            Some(path) => Some(Reloadable::new(Policy::load(path)?)),
            None => None,
        };
        Ok(Self {
            settings,
            tokens,
            policy,
            open_by_default: Policy::open_by_default(),
        })
    }

    /// Logs what the configuration means for callers, once at start-up.
    pub fn log_startup(&self, client_certificates: bool) {
        let tokens = self.tokens.as_ref().map(|t| t.current().len());
        match (&self.policy, self.settings.required) {
            (None, false) => tracing::warn!(
                client_certificates,
                tokens,
                "no authorization policy (--auth-policy-file): every caller, with or without credentials, may call every method"
            ),
            (None, true) => tracing::warn!(
                client_certificates,
                tokens,
                "no authorization policy (--auth-policy-file): every authenticated caller may call every method"
            ),
            (Some(policy), required) => tracing::info!(
                client_certificates,
                tokens,
                rules = policy.current().rules().len(),
                auth_required = required,
                "authorization policy loaded"
            ),
        }
    }

    /// Reloads the token file and the policy whenever they change, until `shutdown`.
    pub fn watch(self: &Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        if let Some(path) = &self.settings.tokens_file {
            let this = self.clone();
            let path_for_reload = path.clone();
            WatchedFiles::new("token file", vec![path.clone()]).spawn(
                interval,
                shutdown.clone(),
                move || {
                    let set = TokenSet::load(&path_for_reload)?;
                    if let Some(tokens) = &this.tokens {
                        tokens.replace(set);
                    }
                    Ok::<(), TokenFileError>(())
                },
            );
        }
        if let Some(path) = &self.settings.policy_file {
            let this = self.clone();
            let path_for_reload = path.clone();
            WatchedFiles::new("authorization policy", vec![path.clone()]).spawn(
                interval,
                shutdown,
                move || {
                    let policy = Policy::load(&path_for_reload)?;
                    if let Some(current) = &this.policy {
                        current.replace(policy);
                    }
                    Ok::<(), PolicyError>(())
                },
            );
        }
    }

    /// Decides one call of `method` (`/package.Service/Method`) given the request's
    /// `authorization` header and the connection's verified client certificates
    /// (leaf first). See the module docs for the order of the checks.
    pub fn authorize(
        &self,
        method: &str,
        authorization: Option<&[u8]>,
        peer_certificates: Option<&[CertificateDer<'static>]>,
    ) -> Result<Caller, Denial> {
        let deny = |reason, caller: Caller| Denial {
            reason,
            method: method.to_owned(),
            caller,
        };
        let anonymous = || Caller::new(None, identity::ANONYMOUS);
        let identity = match (&self.tokens, authorization) {
            (Some(tokens), Some(header)) => {
                let token = std::str::from_utf8(header)
                    .ok()
                    .and_then(tokens::bearer_token);
                match token.and_then(|t| tokens.current().identify(t)) {
                    Some(identity) => Some(identity),
                    None => return Err(deny(DenialReason::InvalidToken, anonymous())),
                }
            }
            _ => match peer_certificates.and_then(|certs| certs.first()) {
                Some(leaf) => match Identity::from_certificate(leaf) {
                    Ok(identity) => Some(identity),
                    Err(_) => {
                        return Err(deny(DenialReason::CertificateWithoutIdentity, anonymous()))
                    }
                },
                None => None,
            },
        };
        let policy = self.policy.as_ref().map(Reloadable::current);
        let caller = self.caller(identity, policy.as_deref());
        let open = policy
            .as_deref()
            .map_or(&self.open_by_default, Policy::open);
        if open.allows(method) {
            return Ok(caller);
        }
        let Some(policy) = policy.as_deref() else {
            if caller.identity().is_none() && self.settings.required {
                return Err(deny(DenialReason::CredentialsRequired, caller));
            }
            return Ok(caller);
        };
        let key = match caller.identity() {
            Some(identity) => identity.as_str(),
            None if self.settings.required => {
                return Err(deny(DenialReason::CredentialsRequired, caller))
            }
            None => identity::ANONYMOUS,
        };
        match policy.rule_for(key) {
            Some(rule) if rule.grants().allows(method) => Ok(caller),
            Some(_) => Err(deny(DenialReason::MethodNotAllowed, caller)),
            None if caller.identity().is_none() => {
                Err(deny(DenialReason::CredentialsRequired, caller))
            }
            None => Err(deny(DenialReason::CallerNotInPolicy, caller)),
        }
    }

    /// The caller with its policy label.
    fn caller(&self, identity: Option<Identity>, policy: Option<&Policy>) -> Caller {
        let label: Arc<str> = match (&identity, policy) {
            (None, Some(policy)) if !self.settings.required => policy
                .rule_for(identity::ANONYMOUS)
                .map_or_else(|| identity::ANONYMOUS.into(), |r| r.name().into()),
            (None, _) => identity::ANONYMOUS.into(),
            (Some(_), None) => identity::AUTHENTICATED.into(),
            (Some(id), Some(policy)) => policy
                .rule_for(id.as_str())
                .map_or_else(|| identity::UNLISTED.into(), |r| r.name().into()),
        };
        Caller::new(identity, label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const CAPTURE: &str = "/digitalriver.gateway.v1.ChargeService/CaptureItems";
    const GET_CHARGE: &str = "/digitalriver.gateway.v1.ChargeService/GetCharge";
    const HEALTH: &str = "/grpc.health.v1.Health/Check";

    fn authorizer(policy: Option<&str>, tokens: &[(&str, &str)], required: bool) -> Authorizer {
        let lines: Vec<String> = tokens
            .iter()
            .map(|(name, token)| {
                let hex: String = Sha256::digest(token.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("{name} sha256:{hex}")
            })
            .collect();
        Authorizer {
            settings: AuthSettings {
                required,
                ..AuthSettings::default()
            },
            tokens: (!tokens.is_empty())
                .then(|| Reloadable::new(TokenSet::parse(&lines.join("\n")).unwrap())),
            policy: policy.map(|p| Reloadable::new(Policy::parse(p).unwrap())),
            open_by_default: Policy::open_by_default(),
        }
    }

    const POLICY: &str = r#"
        [[rules]]
        name = "readers"
        identities = ["token:reader"]
        allow = ["read"]
    "#;

    fn reason(result: Result<Caller, Denial>) -> Option<DenialReason> {
        result.err().map(|d| d.reason)
    }

    #[test]
    fn without_a_policy_everyone_may_call_everything_unless_credentials_are_required() {
        let open = authorizer(None, &[], false);
        let caller = open.authorize(CAPTURE, None, None).unwrap();
        assert_eq!(
            (caller.identity(), caller.policy_name()),
            (None, "anonymous")
        );
        let strict = authorizer(None, &[("a", "tok-a")], true);
        assert_eq!(
            reason(strict.authorize(CAPTURE, None, None)),
            Some(DenialReason::CredentialsRequired)
        );
        assert!(
            strict.authorize(HEALTH, None, None).is_ok(),
            "health stays open"
        );
        let caller = strict
            .authorize(CAPTURE, Some(b"Bearer tok-a"), None)
            .unwrap();
        assert_eq!(caller.identity().unwrap().as_str(), "token:a");
        assert_eq!(caller.policy_name(), "authenticated");
    }

    #[test]
    fn a_policy_allows_what_the_rule_grants_and_denies_the_rest() {
        let auth = authorizer(Some(POLICY), &[("reader", "r"), ("stranger", "s")], false);
        let caller = auth.authorize(GET_CHARGE, Some(b"Bearer r"), None).unwrap();
        assert_eq!(caller.policy_name(), "readers");
        assert_eq!(
            reason(auth.authorize(CAPTURE, Some(b"Bearer r"), None)),
            Some(DenialReason::MethodNotAllowed)
        );
        let denied = auth
            .authorize(GET_CHARGE, Some(b"Bearer s"), None)
            .unwrap_err();
        assert_eq!(denied.reason, DenialReason::CallerNotInPolicy);
        assert_eq!(denied.caller.policy_name(), "unlisted");
        assert_eq!(
            reason(auth.authorize(GET_CHARGE, None, None)),
            Some(DenialReason::CredentialsRequired)
        );
        assert!(auth.authorize(HEALTH, None, None).is_ok());
    }

    #[test]
    fn a_wrong_token_is_refused_even_for_open_methods() {
        let auth = authorizer(None, &[("reader", "r")], false);
        for header in [&b"Bearer nope"[..], b"Basic r", b"Bearer", b"\xff\xfe"] {
            assert_eq!(
                reason(auth.authorize(HEALTH, Some(header), None)),
                Some(DenialReason::InvalidToken)
            );
        }
    }

    #[test]
    fn the_anonymous_rule_serves_callers_without_credentials_unless_required() {
        let policy = r#"
            [[rules]]
            name = "legacy"
            identities = ["anonymous"]
            allow = ["read"]
        "#;
        let caller = authorizer(Some(policy), &[], false)
            .authorize(GET_CHARGE, None, None)
            .unwrap();
        assert_eq!(caller.policy_name(), "legacy");
        assert_eq!(
            reason(authorizer(Some(policy), &[], false).authorize(CAPTURE, None, None)),
            Some(DenialReason::MethodNotAllowed)
        );
        assert_eq!(
            reason(authorizer(Some(policy), &[], true).authorize(GET_CHARGE, None, None)),
            Some(DenialReason::CredentialsRequired)
        );
    }

    #[test]
    fn an_authorization_header_is_not_ours_without_a_token_file() {
        let auth = authorizer(None, &[], false);
        let caller = auth.authorize(CAPTURE, Some(b"Bearer x"), None).unwrap();
        assert!(caller.identity().is_none());
    }
}
