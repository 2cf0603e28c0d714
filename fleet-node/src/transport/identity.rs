//! Who is on the other end: the identity URI in a certificate's subject alternative name.
//!
//! A node's certificate names it `fleet://<cluster>/node/<name>`, a client's
//! `fleet://<cluster>/client/<name>`. The CA signs exactly one such URI into each certificate, so
//! after the TLS handshake the URI is the peer's proven identity; the transport checks it against
//! the catalog and against the sender of every frame.

use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::TransportError;

/// The URI scheme of identities.
pub const IDENTITY_SCHEME: &str = "fleet://";

/// The longest cluster or peer name accepted.
pub const NAME_BYTES_MAX: usize = 64;

/// What a certificate is for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// A fleet node: may open Raft, snapshot and request streams.
    Node,
    /// A client: may only open request streams.
    Client,
}

impl IdentityKind {
    /// The path segment used in the URI (`node` or `client`).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Node => "node",
            IdentityKind::Client => "client",
        }
    }
}

/// A proven identity: cluster, kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The cluster the certificate belongs to.
    pub cluster: String,
    /// Node or client.
    pub kind: IdentityKind,
    /// The node's or client's name, unique within its kind.
    pub name: String,
}

impl Identity {
    /// An identity, after checking that `cluster` and `name` are valid names.
    pub fn new(cluster: &str, kind: IdentityKind, name: &str) -> Result<Identity, TransportError> {
        let identity = Identity {
            cluster: cluster.to_owned(),
            kind,
            name: name.to_owned(),
        };
        check_name(&identity.uri(), "cluster", cluster)?;
        check_name(&identity.uri(), "name", name)?;
        Ok(identity)
    }

    /// The URI written in the certificate: `fleet://<cluster>/<kind>/<name>`.
    pub fn uri(&self) -> String {
        format!(
            "{IDENTITY_SCHEME}{}/{}/{}",
            self.cluster,
            self.kind.as_str(),
            self.name
        )
    }

    /// Parses `fleet://<cluster>/node/<name>` or `fleet://<cluster>/client/<name>`.
    pub fn parse_uri(uri: &str) -> Result<Identity, TransportError> {
        let bad = |reason: &str| TransportError::Identity {
            uri: uri.to_owned(),
            reason: format!(
                "{reason}; expected fleet://<cluster>/node/<name> or fleet://<cluster>/client/<name>"
            ),
        };
        let rest = uri
            .strip_prefix(IDENTITY_SCHEME)
            .ok_or_else(|| bad("not a fleet:// URI"))?;
        let mut parts = rest.split('/');
        let (Some(cluster), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("wrong number of path segments"));
        };
        let kind = match kind {
            "node" => IdentityKind::Node,
            "client" => IdentityKind::Client,
            _ => return Err(bad("kind is neither node nor client")),
        };
        Identity::new(cluster, kind, name)
    }

    /// Reads the identity from a DER certificate: exactly one `fleet://` URI must be in its
    /// subject alternative names.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Identity, TransportError> {
        let no_uri = |reason: String| TransportError::Identity {
            uri: "(certificate)".to_owned(),
            reason,
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| no_uri(format!("certificate does not parse: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| no_uri(format!("bad subject alternative name extension: {e}")))?
            .ok_or_else(|| no_uri("certificate has no subject alternative names".to_owned()))?;
        let mut uris = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(IDENTITY_SCHEME) => Some(*uri),
                _ => None,
            });
        let uri = uris
            .next()
            .ok_or_else(|| no_uri("no fleet:// URI in the subject alternative names".to_owned()))?;
        if uris.next().is_some() {
            return Err(no_uri(
                "more than one fleet:// URI; identity is ambiguous".to_owned(),
            ));
        }
        Identity::parse_uri(uri)
    }

    /// The identity proven by the peer of an established connection.
    pub fn of_connection(conn: &quinn::Connection) -> Result<Identity, TransportError> {
        let missing = || TransportError::Identity {
            uri: "(none)".to_owned(),
            reason: "the peer presented no certificate".to_owned(),
        };
        let certs = conn
            .peer_identity()
            .ok_or_else(missing)?
            .downcast::<Vec<CertificateDer<'static>>>()
            .map_err(|_| missing())?;
        Identity::from_certificate(certs.first().ok_or_else(missing)?)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Checks a cluster or peer name: 1 to [`NAME_BYTES_MAX`] bytes of ASCII letters, digits, `-`,
/// `_` and `.`, so names are safe in URIs, file names, logs and metric labels.
pub fn check_name(uri: &str, what: &str, name: &str) -> Result<(), TransportError> {
    let valid = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(TransportError::Identity {
            uri: uri.to_owned(),
            reason: format!(
                "{what} {name:?} must be 1 to {NAME_BYTES_MAX} ASCII letters, digits, '-', '_' or '.'"
            ),
        })
    }
}
