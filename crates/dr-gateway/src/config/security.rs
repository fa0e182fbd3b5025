//! Flags of `serve` that secure the gRPC listener: TLS and mutual TLS, bearer tokens,
//! the authorization policy, how often their files are checked for changes, and the
//! plaintext health-only listener for probes that cannot speak TLS.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::AuthSettings;
use crate::listen::ListenAddr;
use crate::tls::{ClientAuth, TlsSettings};
use crate::{defaults, shown_duration};

/// TLS, caller identities and authorization (README: "Securing the gateway").
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// PEM certificate chain of the gRPC listener; turns TLS on (with --tls-key-file).
    // why: explicit ids; `tls_cert_file` is already the bus flags' id.
    #[arg(
        id = "grpc_tls_cert_file",
        long = "tls-cert-file",
        env = "DR_GATEWAY_TLS_CERT_FILE",
        requires = "grpc_tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the gRPC listener (with --tls-cert-file).
    #[arg(
        id = "grpc_tls_key_file",
        long = "tls-key-file",
        env = "DR_GATEWAY_TLS_KEY_FILE",
        requires = "grpc_tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA bundle that client certificates must chain to (mutual TLS); the
    /// certificate's URI SAN (e.g. a SPIFFE id), else DNS SAN, names the caller.
    #[arg(long, env = "DR_GATEWAY_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// With --tls-client-ca-file: whether every client must present a certificate
    /// (`required`) or may instead use a bearer token or none (`optional`).
    #[arg(
        long,
        env = "DR_GATEWAY_TLS_CLIENT_AUTH",
        value_enum,
        default_value = "required"
    )]
    pub tls_client_auth: ClientAuth,

    /// File of named, hashed bearer tokens (`<name> sha256:<hex>` per line); callers
    /// send `authorization: Bearer <token>` and are known as `token:<name>`.
    #[arg(long, env = "DR_GATEWAY_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Authorization policy (TOML): which identities may call which methods. Without
    /// one, every caller may call every method.
    #[arg(long, env = "DR_GATEWAY_AUTH_POLICY_FILE")]
    pub auth_policy_file: Option<PathBuf>,

    /// Refuse callers without credentials (UNAUTHENTICATED), except for the methods
    /// the policy opens (health and reflection by default).
    #[arg(long, env = "DR_GATEWAY_AUTH_REQUIRED")]
    pub auth_required: bool,

    /// How often the TLS, client CA, token and policy files are checked for changes.
    #[arg(long, env = "DR_GATEWAY_RELOAD_INTERVAL", default_value = shown_duration!(defaults::RELOAD_INTERVAL), value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,

    /// A plaintext listener serving only grpc.health.v1, for probes that cannot
    /// speak TLS (Kubernetes' gRPC probe), e.g. 0.0.0.0:50052; unset: none.
    #[arg(long, env = "DR_GATEWAY_GRPC_HEALTH_ADDR")]
    pub grpc_health_addr: Option<ListenAddr>,
}

/// Resolved security settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecuritySettings {
    /// TLS on the gRPC listener; `None`: plaintext.
    pub tls: Option<TlsSettings>,
    /// Tokens, policy, whether credentials are required.
    pub auth: AuthSettings,
    /// How often files are checked for changes.
    pub reload_interval: Duration,
    /// The plaintext health-only listener.
    pub grpc_health_addr: Option<ListenAddr>,
}

/// Security flags that cannot work together.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// mTLS without TLS.
    #[error("--tls-client-ca-file needs TLS: set --tls-cert-file and --tls-key-file too")]
    ClientCaWithoutTls,
    /// No way for a caller to authenticate.
    #[error(
        "--auth-required needs a way to authenticate: --tls-client-ca-file or --auth-tokens-file"
    )]
    RequiredWithoutCredentials,
    /// A zero interval.
    #[error("--reload-interval must be more than 0")]
    ZeroReloadInterval,
    /// A file named by a flag cannot be read now (it would fail at start anyway).
    #[error("{flag}: cannot read {}: {source}", path.display())]
    Unreadable {
        /// The flag and its environment variable.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl SecurityArgs {
    /// Checks the combination and that every file named can be read; their contents
    /// are checked when the app starts.
    pub fn resolve(&self) -> Result<SecuritySettings, SecurityError> {
        for (flag, file) in [
            (
                "--tls-cert-file / DR_GATEWAY_TLS_CERT_FILE",
                &self.tls_cert_file,
            ),
            (
                "--tls-key-file / DR_GATEWAY_TLS_KEY_FILE",
                &self.tls_key_file,
            ),
            (
                "--tls-client-ca-file / DR_GATEWAY_TLS_CLIENT_CA_FILE",
                &self.tls_client_ca_file,
            ),
            (
                "--auth-tokens-file / DR_GATEWAY_AUTH_TOKENS_FILE",
                &self.auth_tokens_file,
            ),
            (
                "--auth-policy-file / DR_GATEWAY_AUTH_POLICY_FILE",
                &self.auth_policy_file,
            ),
        ] {
            if let Some(path) = file {
                std::fs::read(path)
                    .map(drop)
                    .map_err(|source| SecurityError::Unreadable {
                        flag,
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: self.tls_client_ca_file.clone(),
                client_auth: self.tls_client_auth,
            }),
            _ if self.tls_client_ca_file.is_some() => {
                return Err(SecurityError::ClientCaWithoutTls)
            }
            _ => None,
        };
        if self.auth_required
            && self.tls_client_ca_file.is_none()
            && self.auth_tokens_file.is_none()
        {
            return Err(SecurityError::RequiredWithoutCredentials);
        }
        if self.reload_interval.is_zero() {
            return Err(SecurityError::ZeroReloadInterval);
        }
        Ok(SecuritySettings {
            tls,
            auth: AuthSettings {
                tokens_file: self.auth_tokens_file.clone(),
                policy_file: self.auth_policy_file.clone(),
                required: self.auth_required,
            },
            reload_interval: self.reload_interval,
            grpc_health_addr: self.grpc_health_addr.clone(),
        })
    }
}
