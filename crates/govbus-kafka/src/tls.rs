//! A certificate authority of a test's own: it signs the brokers' and
//! servers' certificates (and clients', for mutual TLS), and agents trust
//! only it.

use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Name, X509};

use crate::KafkaError;

/// A CA with its key, written to `dir/ca.pem`.
pub struct Authority {
    key: PKey<Private>,
    cert: X509,
    dir: PathBuf,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authority({})", self.ca().display())
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM, unencrypted).
    pub key: PathBuf,
    /// The key, then the certificate, in one file (Kafka's PEM keystore).
    pub bundle: PathBuf,
}

fn ssl(what: &str) -> impl FnOnce(openssl::error::ErrorStack) -> KafkaError + '_ {
    move |e| KafkaError::Io {
        what: what.to_string(),
        source: std::io::Error::other(e),
    }
}

fn key() -> Result<PKey<Private>, KafkaError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(ssl("making a key"))?;
    let ec = EcKey::generate(&group).map_err(ssl("making a key"))?;
    PKey::from_ec_key(ec).map_err(ssl("making a key"))
}

fn name(cn: &str) -> Result<X509Name, KafkaError> {
    let mut n = X509Name::builder().map_err(ssl("naming a certificate"))?;
    n.append_entry_by_text("O", "govbus test")
        .and_then(|_| n.append_entry_by_text("CN", cn))
        .map_err(ssl("naming a certificate"))?;
    Ok(n.build())
}

fn builder(
    subject: &openssl::x509::X509NameRef,
    issuer: &openssl::x509::X509NameRef,
    key: &PKey<Private>,
) -> Result<openssl::x509::X509Builder, KafkaError> {
    let r = (|| {
        let mut b = X509::builder()?;
        let mut serial = BigNum::new()?;
        serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
        b.set_version(2)?;
        let serial = serial.to_asn1_integer()?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(subject)?;
        b.set_issuer_name(issuer)?;
        b.set_pubkey(key)?;
        let (from, to) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(30)?);
        b.set_not_before(&from)?;
        b.set_not_after(&to)?;
        Ok(b)
    })();
    r.map_err(ssl("building a certificate"))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), KafkaError> {
    std::fs::write(path, bytes).map_err(KafkaError::io(format!("writing {}", path.display())))
}

/// Writes a private key (alone or with its certificate), readable by its
/// owner only.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KafkaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(KafkaError::io(format!("writing {}", path.display())))
}

impl Authority {
    /// A new CA, valid 30 days, its certificate written to `dir/ca.pem`.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self, KafkaError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(KafkaError::io(format!("creating {}", dir.display())))?;
        let key = key()?;
        let subject = name("govbus test CA")?;
        let mut b = builder(&subject, &subject, &key)?;
        let r = (|| {
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()?,
            )?;
            b.sign(&key, MessageDigest::sha256())
        })();
        r.map_err(ssl("signing the CA"))?;
        let cert = b.build();
        let ca = Self { key, cert, dir };
        write(&ca.ca(), &ca.cert.to_pem().map_err(ssl("writing the CA"))?)?;
        Ok(ca)
    }

    /// The CA's certificate (PEM): what clients trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `cn`, valid for the host names and IP addresses
    /// in `hosts` (a server's) or for none (a client's), written to
    /// `dir/<cn>.{crt,key,pem}`.
    pub fn issue(&self, cn: &str, hosts: &[&str]) -> Result<Issued, KafkaError> {
        let key = key()?;
        let subject = name(cn)?;
        let mut b = builder(&subject, self.cert.subject_name(), &key)?;
        let r = (|| {
            b.append_extension(BasicConstraints::new().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_agreement()
                    .build()?,
            )?;
            if hosts.is_empty() {
                b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
            } else {
                b.append_extension(
                    ExtendedKeyUsage::new()
                        .server_auth()
                        .client_auth()
                        .build()?,
                )?;
                let mut san = SubjectAlternativeName::new();
                for h in hosts {
                    if h.parse::<std::net::IpAddr>().is_ok() {
                        san.ip(h);
                    } else {
                        san.dns(h);
                    }
                }
                let ctx = b.x509v3_context(Some(&self.cert), None);
                let ext = san.build(&ctx)?;
                b.append_extension(ext)?;
            }
            b.sign(&self.key, MessageDigest::sha256())
        })();
        r.map_err(ssl("signing a certificate"))?;
        let cert = b.build().to_pem().map_err(ssl("writing a certificate"))?;
        let key = key
            .private_key_to_pem_pkcs8()
            .map_err(ssl("writing a key"))?;
        let issued = Issued {
            cert: self.dir.join(format!("{cn}.crt")),
            key: self.dir.join(format!("{cn}.key")),
            bundle: self.dir.join(format!("{cn}.pem")),
        };
        write(&issued.cert, &cert)?;
        write_private(&issued.key, &key)?;
        write_private(&issued.bundle, &[key.as_slice(), cert.as_slice()].concat())?;
        Ok(issued)
    }
}
