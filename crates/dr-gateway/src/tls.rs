//! TLS on the gRPC listener: the server certificate and key, and optionally a CA
//! bundle that client certificates must chain to (mutual TLS), loaded from PEM files
//! and reloaded when they change ([`crate::reload`]).
//!
//! The gateway terminates TLS itself (tokio-rustls, with the aws-lc-rs provider that
//! reqwest and async-nats use too): the gRPC listener ([`crate::grpc::server`])
//! hands each accepted connection to [`ServerTls::handshake`] and serves the TLS
//! stream like a plaintext one. tonic's own `ServerTlsConfig` is fixed at start-up,
//! so it could not pick up a rotated certificate without a restart.
//!
//! A reload builds a whole new `rustls::ServerConfig` (certificate, key and client
//! verifier together) and swaps it in: each handshake uses the configuration in
//! force when its connection was accepted, and connections already open keep theirs,
//! so open streams are not cut. why a whole config and not a swappable
//! `ResolvesServerCert`: the certificate and the trusted CAs change consistently in
//! one step, and a session resumed from a ticket or cache of the old configuration
//! cannot skip verification against a CA that was removed (each configuration has
//! its own session cache).
//!
//! Handshakes run concurrently, one task per connection (one slow client does not
//! hold up the others): the listener allows at most
//! [`defaults::TLS_MAX_HANDSHAKES`] at once, and each must finish within
//! [`defaults::TLS_HANDSHAKE_TIMEOUT`]. A client that speaks plaintext, offers no
//! certificate when one is required, or one from another CA fails the handshake and
//! never reaches a gRPC service.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::defaults;
use crate::reload::{Reloadable, WatchedFiles};

/// Whether clients must present a certificate (with a client CA bundle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// A client may connect without a certificate (it may then use a bearer token);
    /// one it presents must chain to the CA bundle.
    Optional,
    /// Every client must present a certificate that chains to the CA bundle.
    Required,
}

/// Where the listener's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain of the server (leaf first).
    pub cert_file: PathBuf,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle client certificates must chain to; `None`: no client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required (with `client_ca_file`).
    pub client_auth: ClientAuth,
}

impl TlsSettings {
    /// The files a reload watches.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        files.extend(self.client_ca_file.clone());
        files
    }
}

/// Why the TLS material cannot be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A PEM file holds nothing usable of what it should.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's contents).
        what: &'static str,
    },
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("the certificate in {cert} and the key in {key} cannot be used together: {source}")]
    CertifiedKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// The client CA bundle cannot verify certificates.
    #[error("the client CA bundle {path} cannot be used: {source}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The crypto provider refused the protocol versions (a build problem).
    #[error("TLS setup failed: {0}")]
    Provider(#[source] rustls::Error),
}

/// The listener's TLS configuration, replaced as a whole on reload.
pub struct ServerTls {
    settings: TlsSettings,
    config: Reloadable<Arc<ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // why: the files' paths only; the loaded configuration holds the private key.
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate, key and client CA bundle; fails on anything unusable.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let config = build_config(&settings)?;
        Ok(Self {
            settings,
            config: Reloadable::new(Arc::new(config)),
        })
    }

    /// Loads the files again; on failure the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build_config(&self.settings)?;
        self.config.replace(Arc::new(config));
        Ok(())
    }

    /// Whether clients may present certificates (a client CA bundle is set).
    pub fn verifies_clients(&self) -> bool {
        self.settings.client_ca_file.is_some()
    }

    /// Reloads whenever the files change, until `shutdown`.
    pub fn watch(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let watched =
            WatchedFiles::new("TLS certificate, key and client CA", self.settings.files());
        let this = self.clone();
        watched.spawn(interval, shutdown, move || this.reload())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from((*self.config.current()).clone())
    }

    /// The server side of the TLS handshake on an accepted connection, with the
    /// configuration in force now, within [`defaults::TLS_HANDSHAKE_TIMEOUT`].
    pub async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        match tokio::time::timeout(
            defaults::TLS_HANDSHAKE_TIMEOUT,
            self.acceptor().accept(stream),
        )
        .await
        {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::TimedOut),
        }
    }
}

/// Why a client's TLS handshake did not complete (the connection is dropped).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client spoke plaintext, offered no or an untrusted certificate, or
    /// closed the connection.
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] io::Error),
    /// The client did not finish within [`defaults::TLS_HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake timed out")]
    TimedOut,
}

fn build_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certificates(&settings.cert_file)?;
    let key = read_key(&settings.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(path)? {
                roots.add(cert).map_err(|_| TlsError::Pem {
                    path: path.clone(),
                    what: "holds a certificate that is not a usable CA certificate",
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match settings.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|source| TlsError::ClientCa {
                path: path.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::CertifiedKey {
                cert: settings.cert_file.clone(),
                key: settings.key_file.clone(),
                source,
            })?;
    // why: gRPC runs on HTTP/2, and gRPC clients (grpc-go, grpc-java, C-core) refuse
    // a TLS connection that did not negotiate `h2` through ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM file (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem {
            path: path.to_owned(),
            what: "is not valid PEM",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "holds no CERTIFICATE block",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    // why: the parse error of a key file is mapped to a fixed text, so nothing of
    // the file ever reaches a log line.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::Pem {
        path: path.to_owned(),
        what: "holds no usable PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1 PEM)",
    })
}
