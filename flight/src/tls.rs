//! TLS (rustls) for every Flight connection of a process: servers present
//! `--tls-cert`/`--tls-key`; every connection a process makes (client,
//! worker→worker, worker→center) verifies the server against `--tls-ca`.
//! One setting per process, like the token: a process talks to one cluster.
//! The CLI flags fall back to `QUIVER_TLS_CERT`, `QUIVER_TLS_KEY`,
//! `QUIVER_TLS_CA`, which is also how clients and `quiver local`'s children
//! get them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::{Error, Result};

/// PEM material loaded once.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    identity: Option<(Vec<u8>, Vec<u8>)>,
    ca: Option<Vec<u8>>,
}

static TLS: OnceLock<Tls> = OnceLock::new();

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        context: format!("cannot read the TLS {what} {}", path.display()),
        source,
    })
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Tls {
    /// Loads the files (each optional); a server needs cert and key together.
    pub fn load(cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>) -> Result<Tls> {
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c, "certificate")?, read(k, "key")?)),
            (None, None) => None,
            _ => {
                return Err(Error::Protocol(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        };
        let ca = ca.map(|p| read(p, "CA certificate")).transpose()?;
        Ok(Tls { identity, ca })
    }

    fn from_env() -> Tls {
        let (cert, key, ca) = (
            env_path("QUIVER_TLS_CERT"),
            env_path("QUIVER_TLS_KEY"),
            env_path("QUIVER_TLS_CA"),
        );
        Tls::load(cert.as_deref(), key.as_deref(), ca.as_deref()).unwrap_or_else(|e| {
            tracing::error!("TLS from the environment: {e}");
            Tls::default()
        })
    }
}

/// Sets this process's TLS material before its first server or connection.
/// Returns false if it was already fixed.
pub fn set(tls: Tls) -> bool {
    TLS.set(tls).is_ok()
}

fn get() -> &'static Tls {
    TLS.get_or_init(Tls::from_env)
}

/// Whether this process's connections use TLS (a CA to verify servers with).
pub fn client_enabled() -> bool {
    get().ca.is_some()
}

/// The URL scheme Flight clients should use for this process's servers.
pub fn location_scheme() -> &'static str {
    if get().identity.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    }
}

/// The server side, if this process has a certificate and key.
pub fn server_config() -> Option<ServerTlsConfig> {
    get()
        .identity
        .as_ref()
        .map(|(cert, key)| ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}

/// The client side, if this process has a CA to verify servers with.
pub fn client_config() -> Option<ClientTlsConfig> {
    get()
        .ca
        .as_ref()
        .map(|ca| ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
}
