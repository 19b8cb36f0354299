//! The control plane's throwaway PKI: a CA, a serving certificate for kube-apiserver and
//! kube-controller-manager signed by it, an admin client certificate in `system:masters`, and
//! the service-account signing key pair. Generated with rcgen into the work directory; no
//! process is started here.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::SandboxError;

/// Names the serving certificate is valid for: loopback, and the names in-cluster clients use.
const SERVING_NAMES: [&str; 5] = [
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
];

/// The admin user's name; its group `system:masters` is what grants it everything under RBAC.
const ADMIN_USER: &str = "shardplane-admin";

/// Paths of the PEM files written by [`write_certificates`].
#[derive(Debug, Clone)]
pub(crate) struct CertificateFiles {
    /// The CA certificate: trusted by clients, and the client CA of the API server.
    pub(crate) ca_cert: PathBuf,
    /// The serving certificate (SANs in [`SERVING_NAMES`]).
    pub(crate) serving_cert: PathBuf,
    /// The serving certificate's private key.
    pub(crate) serving_key: PathBuf,
    /// The admin client certificate.
    pub(crate) admin_cert: PathBuf,
    /// The admin client certificate's private key.
    pub(crate) admin_key: PathBuf,
    /// The private key that signs service-account tokens.
    pub(crate) service_account_key: PathBuf,
    /// The public key that verifies service-account tokens.
    pub(crate) service_account_public_key: PathBuf,
}

/// Generates the PKI and writes it as PEM files into `dir`.
pub(crate) fn write_certificates(dir: &Path) -> Result<CertificateFiles, SandboxError> {
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "shardplane-sandbox-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut serving_params = CertificateParams::new(SERVING_NAMES.map(String::from).to_vec())?;
    serving_params.distinguished_name = rcgen::DistinguishedName::new();
    serving_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving_params.use_authority_key_identifier_extension = true;
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving_params.signed_by(&serving_key, &ca)?;

    let mut admin_params = CertificateParams::default();
    admin_params.distinguished_name = rcgen::DistinguishedName::new();
    admin_params
        .distinguished_name
        .push(DnType::CommonName, ADMIN_USER);
    admin_params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    admin_params.use_authority_key_identifier_extension = true;
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin_params.signed_by(&admin_key, &ca)?;

    // ECDSA P-256: kube-apiserver signs service-account tokens with it as ES256.
    let service_account_key = KeyPair::generate()?;

    let files = CertificateFiles {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("serving.crt"),
        serving_key: dir.join("serving.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        service_account_key: dir.join("service-account.key"),
        service_account_public_key: dir.join("service-account.pub"),
    };
    write(&files.ca_cert, &ca.pem())?;
    write(&files.serving_cert, &serving_cert.pem())?;
    write(&files.serving_key, &serving_key.serialize_pem())?;
    write(&files.admin_cert, &admin_cert.pem())?;
    write(&files.admin_key, &admin_key.serialize_pem())?;
    write(
        &files.service_account_key,
        &service_account_key.serialize_pem(),
    )?;
    write(
        &files.service_account_public_key,
        &service_account_key.public_key_pem(),
    )?;
    Ok(files)
}

fn write(path: &Path, contents: &str) -> Result<(), SandboxError> {
    std::fs::write(path, contents).map_err(|source| SandboxError::WorkDir {
        path: path.to_path_buf(),
        source,
    })
}
