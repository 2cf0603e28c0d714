//! TLS material of one node or client, and the rustls / quinn configurations built from it.
//!
//! The configurations are built by hand rather than with quinn's `with_single_cert`, which would
//! enable 0-RTT (replayable) and disable client authentication: here both sides present a
//! certificate signed by the cluster CA, only TLS 1.3 is offered, the ALPN is [`ALPN`], session
//! resumption and early data are off, and the crypto provider is rustls' *ring* provider passed
//! explicitly, never the process default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TransportError;
use super::identity::{Identity, IdentityKind};

/// The ALPN protocol of fleet's transport.
pub const ALPN: &[u8] = b"fleet/1";

/// File name of the cluster CA certificate in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the cluster CA key (only in the CA's own directory).
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of a node certificate.
pub const NODE_CERT_FILE: &str = "node.crt";
/// File name of a node key.
pub const NODE_KEY_FILE: &str = "node.key";
/// File name of a client certificate.
pub const CLIENT_CERT_FILE: &str = "client.crt";
/// File name of a client key.
pub const CLIENT_KEY_FILE: &str = "client.key";

/// The cluster CA certificate plus this process's certificate chain and key.
pub struct Tls {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
}

impl Clone for Tls {
    fn clone(&self) -> Tls {
        Tls {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads `ca.crt` and either `node.crt` + `node.key` or, when there is no node certificate,
    /// `client.crt` + `client.key` from `dir` (the layout `fleet-node certs` writes).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Tls, TransportError> {
        let dir = dir.as_ref();
        let (cert, key) = if dir.join(NODE_CERT_FILE).exists() {
            (NODE_CERT_FILE, NODE_KEY_FILE)
        } else if dir.join(CLIENT_CERT_FILE).exists() {
            (CLIENT_CERT_FILE, CLIENT_KEY_FILE)
        } else {
            return Err(TransportError::Certificate(format!(
                "{} holds neither {NODE_CERT_FILE} nor {CLIENT_CERT_FILE}; create them with \
                 `fleet-node certs node` or `fleet-node certs client`",
                dir.display()
            )));
        };
        Tls::from_files(dir.join(CA_CERT_FILE), dir.join(cert), dir.join(key))
    }

    /// Loads the CA certificate, this process's certificate (chain) and its key from PEM files.
    pub fn from_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Tls, TransportError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TransportError::Io {
                path: path.to_owned(),
                source,
            })
        };
        warn_if_key_readable_by_others(key.as_ref());
        Tls::from_pem(
            &read(ca.as_ref())?,
            &read(cert.as_ref())?,
            &read(key.as_ref())?,
        )
    }

    /// Builds from PEM text: the CA certificate, this process's certificate (optionally followed
    /// by intermediates) and its private key.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Tls, TransportError> {
        let bad = |what: &str, e: rustls::pki_types::pem::Error| {
            TransportError::Certificate(format!("cannot read the {what} PEM: {e}"))
        };
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| bad("CA certificate", e))?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("key", e))?;
        let leaf = chain.first().ok_or_else(|| {
            TransportError::Certificate("the certificate file holds no certificate".to_owned())
        })?;
        let identity = Identity::from_certificate(leaf)?;
        Ok(Tls {
            ca,
            chain,
            key,
            identity,
        })
    }

    /// The identity in this process's certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The cluster CA certificate.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The rustls server side: TLS 1.3 only, a client certificate signed by the cluster CA is
    /// required, ALPN [`ALPN`], no session tickets, no early data.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TransportError> {
        let provider = Tls::provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| {
            TransportError::Certificate(format!("cannot build the client verifier: {e}"))
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.max_early_data_size = 0;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(config)
    }

    /// The rustls client side: TLS 1.3 only, the server must present a certificate of the
    /// cluster CA valid for the name dialed, this process's certificate is presented, ALPN
    /// [`ALPN`], no resumption, no early data.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TransportError> {
        let mut config = rustls::ClientConfig::builder_with_provider(Tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.enable_early_data = false;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    /// [`Tls::server_config`] wrapped for quinn, with `transport` limits.
    pub fn quinn_server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, TransportError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(self.server_config()?)
            .map_err(|e| TransportError::Certificate(format!("QUIC server config: {e}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport);
        // Peers are servers in a datacenter; an address change mid-connection is not expected.
        config.migration(false);
        Ok(config)
    }

    /// [`Tls::client_config`] wrapped for quinn, with `transport` limits.
    pub fn quinn_client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, TransportError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(self.client_config()?)
            .map_err(|e| TransportError::Certificate(format!("QUIC client config: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }

    pub(crate) fn require_node(&self) -> Result<(), TransportError> {
        if self.identity.kind == IdentityKind::Node {
            Ok(())
        } else {
            Err(TransportError::Identity {
                uri: self.identity.uri(),
                reason: "a node must run with a node certificate, not a client's".to_owned(),
            })
        }
    }
}

fn warn_if_key_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %PathBuf::from(path).display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "private key is readable by group or others; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
