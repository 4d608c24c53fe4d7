//! Test certificates for etcd's TLS and client-certificate auth (rcgen, ring): a CA,
//! a server certificate per member, a client certificate, and a rogue client
//! certificate from a CA nobody trusts.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::CLIENT_CN;

/// The PEM files of a TLS cluster, in its temporary directory.
///
/// Every server certificate and the client certificate are signed by the CA
/// in [`TlsFiles::ca_file`]; the rogue client certificate is a valid client
/// certificate (CN [`CLIENT_CN`]) signed by another CA, which the members do
/// not trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA the members trust and whose certificates they present.
    pub ca_file: PathBuf,
    /// Client certificate (CN [`CLIENT_CN`], extended key usage clientAuth).
    pub cert_file: PathBuf,
    /// Its key (PKCS#8, ECDSA P-256).
    pub key_file: PathBuf,
    /// The other CA, trusted by nobody: a client that trusts only this one
    /// must refuse the members.
    pub rogue_ca_file: PathBuf,
    /// Client certificate (CN [`CLIENT_CN`]) signed by the rogue CA.
    pub rogue_cert_file: PathBuf,
    /// Its key.
    pub rogue_key_file: PathBuf,
}

/// Makes the CA, one server certificate per member (SANs: its address and
/// 127.0.0.1; server and client auth, as etcd's gateway dials the member
/// with it), the client certificate and the rogue CA and client certificate,
/// as PEM files in `dir`. Returns the files and each member's (cert, key).
pub(super) fn write_tls_files(dir: &Path, ips: &[Ipv4Addr]) -> (TlsFiles, Vec<(PathBuf, PathBuf)>) {
    fs::create_dir(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let (ca_pem, ca) = new_ca("overlay test CA");
    let (rogue_ca_pem, rogue_ca) = new_ca("overlay rogue CA");
    let write = |name: &str, contents: &str, secret: bool| -> PathBuf {
        let path = dir.join(name);
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        file.write_all(contents.as_bytes())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    };
    let servers = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let sans = [Ipv4Addr::LOCALHOST, *ip]
                .map(|a| SanType::IpAddress(a.into()))
                .to_vec();
            let eku = [
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let (cert, key) = new_leaf(&ca, &format!("m{i}"), sans, &eku);
            (
                write(&format!("m{i}.pem"), &cert, false),
                write(&format!("m{i}-key.pem"), &key, true),
            )
        })
        .collect();
    let (cert, key) = new_leaf(
        &ca,
        CLIENT_CN,
        Vec::new(),
        &[ExtendedKeyUsagePurpose::ClientAuth],
    );
    let (rogue_cert, rogue_key) = new_leaf(
        &rogue_ca,
        CLIENT_CN,
        Vec::new(),
        &[ExtendedKeyUsagePurpose::ClientAuth],
    );
    let files = TlsFiles {
        ca_file: write("ca.pem", &ca_pem, false),
        cert_file: write("client.pem", &cert, false),
        key_file: write("client-key.pem", &key, true),
        rogue_ca_file: write("rogue-ca.pem", &rogue_ca_pem, false),
        rogue_cert_file: write("rogue-client.pem", &rogue_cert, false),
        rogue_key_file: write("rogue-client-key.pem", &rogue_key, true),
    };
    (files, servers)
}

/// Certificate parameters valid 2000–2100 with `cn` as the common name.
fn params(cn: &str, sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params
}

/// A self-signed CA: its PEM certificate and its issuer.
fn new_ca(cn: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = params(cn, Vec::new());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().expect("generating a CA key");
    let cert = params.self_signed(&key).expect("self-signing the CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate signed by `ca`: PEM certificate and PEM key.
fn new_leaf(
    ca: &Issuer<'_, KeyPair>,
    cn: &str,
    sans: Vec<SanType>,
    eku: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let mut params = params(cn, sans);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = eku.to_vec();
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("generating a key");
    let cert = params
        .signed_by(&key, ca)
        .unwrap_or_else(|e| panic!("signing {cn}: {e}"));
    (cert.pem(), key.serialize_pem())
}

