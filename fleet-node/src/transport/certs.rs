//! The cluster's certificates: an Ed25519 CA, and node and client certificates it signs.
//!
//! This is the library behind `fleet-node certs init|node|client`. A CA directory holds
//! `ca.crt` and `ca.key`; a node's directory holds `ca.crt`, `node.crt` and `node.key`; a
//! client's `ca.crt`, `client.crt` and `client.key` — the layout [`Tls::from_dir`] reads. Keys
//! are written with mode 0600, and no existing file is replaced unless `force` is set.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::TransportError;
use super::identity::{Identity, IdentityKind, check_name};
use super::tls::{
    CA_CERT_FILE, CA_KEY_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE, NODE_CERT_FILE, NODE_KEY_FILE,
    Tls,
};

/// Default lifetime of a CA certificate.
pub const CA_VALIDITY_DAYS_DEFAULT: u32 = 3650;
/// Default lifetime of a node or client certificate.
pub const LEAF_VALIDITY_DAYS_DEFAULT: u32 = 1825;
/// Most host names or addresses in one node certificate.
pub const HOSTS_MAX: usize = 32;

/// The common name of every fleet CA; the cluster name is its organization.
const CA_COMMON_NAME: &str = "fleet CA";

/// When a certificate is valid.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First instant of validity.
    pub not_before: SystemTime,
    /// Last instant of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from an hour ago (to tolerate clock skew between machines) for `days` days.
    pub fn days_from_now(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), TransportError> {
        let seconds = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| Duration::from_secs(d.as_secs()))
                .map_err(|_| {
                    TransportError::Certificate("dates before 1970 are not supported".to_owned())
                })
        };
        if self.not_after <= self.not_before {
            return Err(TransportError::Certificate(
                "a certificate's not_after must be later than its not_before".to_owned(),
            ));
        }
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + seconds(self.not_before)?;
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + seconds(self.not_after)?;
        Ok(())
    }
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> TransportError + '_ {
    move |e| TransportError::Certificate(format!("{what}: {e}"))
}

fn ca_distinguished_name(cluster: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, cluster);
    name
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_distinguished_name(cluster);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A cluster CA: its certificate and its signing key.
pub struct CertificateAuthority {
    cluster: String,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new CA for `cluster` with a fresh Ed25519 key.
    pub fn generate(cluster: &str, validity: Validity) -> Result<Self, TransportError> {
        check_name(cluster, "cluster", cluster)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(rcgen_error("generating the CA key"))?;
        let mut params = ca_params(cluster);
        validity.apply(&mut params)?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("self-signing the CA"))?;
        Ok(CertificateAuthority {
            cluster: cluster.to_owned(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Loads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, TransportError> {
        let dir = dir.as_ref();
        let cert_pem = read_text(&dir.join(CA_CERT_FILE))?;
        let key_pem = read_text(&dir.join(CA_KEY_FILE))?;
        let key = KeyPair::from_pem(&key_pem).map_err(rcgen_error("reading ca.key"))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TransportError::Certificate(format!("reading ca.crt: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TransportError::Certificate(format!("parsing ca.crt: {e}")))?;
        let cluster = cert
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .ok_or_else(|| {
                TransportError::Certificate(
                    "ca.crt names no organization; it was not made by `fleet-node certs init`"
                        .to_owned(),
                )
            })?
            .to_owned();
        check_name(&cluster, "cluster", &cluster)?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(TransportError::Certificate(format!(
                "{} does not belong to {}",
                dir.join(CA_KEY_FILE).display(),
                dir.join(CA_CERT_FILE).display()
            )));
        }
        Ok(CertificateAuthority {
            cluster,
            cert_pem,
            key,
        })
    }

    /// The cluster this CA certifies.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA certificate (PEM).
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`, creating it if needed.
    pub fn write(
        &self,
        dir: impl AsRef<Path>,
        force: bool,
    ) -> Result<Vec<PathBuf>, TransportError> {
        write_files(
            dir.as_ref(),
            &[
                (CA_CERT_FILE, self.cert_pem.as_str(), FileMode::Public),
                (CA_KEY_FILE, &self.key.serialize_pem(), FileMode::Secret),
            ],
            force,
        )
    }

    /// Issues a certificate for `name` of `kind`. A node certificate also names `hosts` (DNS
    /// names or IP addresses its peers dial it by) and may act as TLS server and client; a client
    /// certificate only as TLS client.
    pub fn issue(
        &self,
        kind: IdentityKind,
        name: &str,
        hosts: &[String],
        validity: Validity,
    ) -> Result<IssuedCertificate, TransportError> {
        let identity = Identity::new(&self.cluster, kind, name)?;
        if hosts.len() > HOSTS_MAX {
            return Err(TransportError::Certificate(format!(
                "{} host names given; at most {HOSTS_MAX}",
                hosts.len()
            )));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(rcgen_error("generating the key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, self.cluster.as_str());
        let uri = identity
            .uri()
            .try_into()
            .map_err(rcgen_error("encoding the identity URI"))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for host in hosts {
            let host = host.trim();
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.try_into()
                        .map_err(|e| TransportError::Certificate(format!("host {host:?}: {e}")))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match kind {
            IdentityKind::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            IdentityKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params)?;
        let issuer = Issuer::new(ca_params(&self.cluster), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rcgen_error("signing the certificate"))?;
        Ok(IssuedCertificate {
            identity,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// A certificate the CA issued, with its key and the CA certificate.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// The identity in the certificate.
    pub identity: Identity,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// The CA certificate (PEM).
    pub ca_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl IssuedCertificate {
    /// The TLS material for a transport.
    pub fn tls(&self) -> Result<Tls, TransportError> {
        Tls::from_pem(&self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    /// Writes `ca.crt` and `node.crt`/`node.key` (or `client.crt`/`client.key`) into `dir`. An
    /// existing `ca.crt` with the same contents is left as it is.
    pub fn write(
        &self,
        dir: impl AsRef<Path>,
        force: bool,
    ) -> Result<Vec<PathBuf>, TransportError> {
        let (cert, key) = match self.identity.kind {
            IdentityKind::Node => (NODE_CERT_FILE, NODE_KEY_FILE),
            IdentityKind::Client => (CLIENT_CERT_FILE, CLIENT_KEY_FILE),
        };
        let dir = dir.as_ref();
        let mut files = vec![
            (cert, self.cert_pem.as_str(), FileMode::Public),
            (key, self.key_pem.as_str(), FileMode::Secret),
        ];
        let same_ca = std::fs::read_to_string(dir.join(CA_CERT_FILE))
            .is_ok_and(|existing| existing == self.ca_pem);
        if !same_ca {
            files.insert(0, (CA_CERT_FILE, self.ca_pem.as_str(), FileMode::Public));
        }
        write_files(dir, &files, force)
    }
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum FileMode {
    Public,
    Secret,
}

fn read_text(path: &Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path).map_err(|source| TransportError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes every file or none: existence is checked for all of them before the first is written.
fn write_files(
    dir: &Path,
    files: &[(&str, &str, FileMode)],
    force: bool,
) -> Result<Vec<PathBuf>, TransportError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TransportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if !force {
        for (name, _, _) in files {
            let path = dir.join(name);
            if path.exists() {
                return Err(TransportError::FileExists { path });
            }
        }
    }
    let mut written = Vec::with_capacity(files.len());
    for (name, contents, mode) in files {
        let path = dir.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if *mode == FileMode::Secret {
                0o600
            } else {
                0o644
            });
        }
        let mut file = options.open(&path).map_err(io(&path))?;
        #[cfg(unix)]
        if *mode == FileMode::Secret {
            // `mode` applies only when the file is created; an overwritten key is narrowed too.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io(&path))?;
        }
        file.write_all(contents.as_bytes()).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}
