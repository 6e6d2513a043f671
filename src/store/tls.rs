//! TLS for a run given a CA bundle (`--ca-bundle`, `AWS_CA_BUNDLE`).
//!
//! The bundle's certificates join the system roots, and a server
//! certificate that is exactly one of them is accepted as well: a
//! self-signed certificate made with `openssl req -x509` (or MinIO's
//! certgen) is marked CA:TRUE, which webpki refuses as a server's own
//! (`CaUsedAsEndEntity`), while aws-cli, curl and rclone accept it when it
//! is given as the CA file. Such a certificate must still be valid now and
//! name the endpoint's host, and the handshake signature is checked with
//! the provider's algorithms as for any other certificate.
//!
//! The SDK's HTTP client takes extra trust anchors but no certificate
//! verifier, so with a bundle this module builds the HTTPS client itself
//! from what the SDK's client is made of (hyper-util's pooled client over
//! hyper-rustls), with the same connect and read timeouts and the same
//! error kinds, which decide the SDK's retries. Without a bundle the SDK's
//! client is used as it is.
//!
//! A failed handshake comes back tagged with the bundle, and a refused
//! certificate as a [`Refusal`] saying which check failed: [`explain`]
//! turns either into the message for the user.

use std::error::Error as StdError;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use self::der::Facts;

mod der;
mod http;

/// The certificates of a CA bundle file.
#[derive(Debug, Clone)]
pub struct Bundle {
    path: Arc<Path>,
    certs: Vec<CertificateDer<'static>>,
}

impl Bundle {
    /// Reads the file and checks it the way the TLS layer will use it, so
    /// a bad file is an error naming it instead of a failure deep in the
    /// client.
    pub fn read(path: &Path) -> Result<Bundle> {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the CA bundle {}", path.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("the CA bundle {} is not valid PEM: {e:?}", path.display()))?;
        if certs.is_empty() {
            bail!("the CA bundle {} holds no certificate", path.display());
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in &certs {
            roots.add(cert.clone()).map_err(|e| {
                anyhow!(
                    "the CA bundle {} holds a certificate that cannot be used: {e}",
                    path.display()
                )
            })?;
        }
        Ok(Bundle {
            path: path.into(),
            certs,
        })
    }

    /// Whether `cert` is, byte for byte, one of the bundle's certificates.
    fn holds(&self, cert: &CertificateDer<'_>) -> bool {
        self.certs.iter().any(|c| c.as_ref() == cert.as_ref())
    }

    /// The system roots and the bundle's certificates, as the SDK's client
    /// would trust them.
    fn with_system_roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are skipped, as the SDK does: the
        // bundle may be all that is needed.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots.add_parsable_certificates(self.certs.iter().cloned());
        roots
    }
}

/// An HTTP(S) client that trusts the system roots and `bundle`, and a
/// server certificate that is one of the bundle's.
pub fn client(bundle: &Bundle) -> Result<SharedHttpClient> {
    let provider = Arc::new(provider());
    let verifier =
        BundleVerifier::new(bundle.clone(), bundle.with_system_roots(), provider.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(http::client(config, bundle.path.clone()))
}

/// ring with the cipher suites the SDK's client allows.
fn provider() -> CryptoProvider {
    use rustls::CipherSuite::*;
    let allowed = [
        TLS13_AES_256_GCM_SHA384,
        TLS13_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let base = rustls::crypto::ring::default_provider();
    CryptoProvider {
        cipher_suites: base
            .cipher_suites
            .iter()
            .filter(|s| allowed.contains(&s.suite()))
            .copied()
            .collect(),
        ..base
    }
}

/// webpki's verification (system roots and bundle), and for a server
/// certificate that is one of the bundle's and that webpki refuses only for
/// want of an issuer or for being a CA, the checks that still apply to it.
#[derive(Debug)]
struct BundleVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    bundle: Bundle,
}

impl BundleVerifier {
    fn new(
        bundle: Bundle,
        roots: rustls::RootCertStore,
        provider: Arc<CryptoProvider>,
    ) -> Result<BundleVerifier> {
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| anyhow!("cannot set up TLS with {}: {e}", bundle.path.display()))?;
        Ok(BundleVerifier { webpki, bundle })
    }

    /// Why `cert` is not to be trusted, if it is not.
    fn check(
        &self,
        cert: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let refused = match self.webpki.verify_server_cert(
            cert,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if lacks_issuer(&refused) && self.bundle.holds(cert) {
            return check_pinned(cert, server_name, now);
        }
        Err(refused)
    }
}

impl ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(cause) => Err(Refusal::new(&self.bundle, end_entity, server_name, cause).into()),
        }
    }

    // The handshake signatures are webpki's, with the provider's algorithms,
    // whichever way the certificate was trusted.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// webpki found no issuer for the certificate, or found it to be a CA:
/// the two refusals that a certificate trusted by itself overrides.
fn lacks_issuer(err: &rustls::Error) -> bool {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => true,
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => matches!(
            e.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// The checks for a certificate trusted because it is in the bundle: it is
/// valid now and names the host. Its own signature is not checked: the
/// user vouched for these very bytes, and the handshake signature, checked
/// as always, proves that the server holds its key.
fn check_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let facts = Facts::of(cert).ok_or(CertificateError::BadEncoding)?;
    if now.as_secs() < facts.not_before {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: unix_time(facts.not_before),
        }
        .into());
    }
    if now.as_secs() > facts.not_after {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: unix_time(facts.not_after),
        }
        .into());
    }
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    rustls::client::verify_server_name(&parsed, server_name)
}

fn unix_time(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

/// Why the server's certificate was refused, in the user's terms.
#[derive(Debug)]
struct Refusal {
    bundle: Arc<Path>,
    host: String,
    /// `None` when the certificate cannot be read.
    cert: Option<Facts>,
    in_bundle: bool,
    cause: rustls::Error,
}

impl Refusal {
    fn new(
        bundle: &Bundle,
        cert: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        cause: rustls::Error,
    ) -> Refusal {
        Refusal {
            bundle: bundle.path.clone(),
            host: server_name.to_str().into_owned(),
            cert: Facts::of(cert),
            in_bundle: bundle.holds(cert),
            cause,
        }
    }

    /// "CN=x, self-signed" or "CN=x, issued by CN=y", as far as known.
    fn describe_cert(&self) -> String {
        let Some(cert) = &self.cert else {
            return "unreadable".into();
        };
        let subject = cert.subject.as_deref().unwrap_or("no common name");
        match (&cert.issuer, cert.self_issued) {
            (_, true) => format!("{subject}, self-signed"),
            (Some(issuer), false) => format!("{subject}, issued by {issuer}"),
            (None, false) => subject.to_string(),
        }
    }

    fn write_untrusted(&self, f: &mut fmt::Formatter<'_>, ca: bool) -> fmt::Result {
        let bundle = self.bundle.display();
        let cert = self.describe_cert();
        let self_signed = self.cert.as_ref().is_some_and(|c| c.self_issued);
        if self_signed {
            write!(
                f,
                "the server's TLS certificate ({cert}) is not one of the certificates in {bundle}"
            )
        } else if ca {
            write!(
                f,
                "the server's TLS certificate ({cert}) is a CA certificate, which is accepted \
                 only as one of the certificates in {bundle}, and it is not one of them"
            )
        } else {
            write!(
                f,
                "the server's TLS certificate ({cert}) is not issued by any certificate in \
                 {bundle} or the system's roots, nor is it one of them"
            )
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CertificateError as C;
        let host = &self.host;
        let rustls::Error::InvalidCertificate(cause) = &self.cause else {
            return write!(
                f,
                "the server's TLS certificate did not verify: {}",
                self.cause
            );
        };
        match cause {
            C::NotValidForNameContext { presented, .. } if presented.is_empty() => write!(
                f,
                "the server's TLS certificate names no host (it has no subjectAltName), \
                 but the endpoint is {host}"
            ),
            C::NotValidForNameContext { presented, .. } => {
                let names: Vec<String> = presented.iter().map(|n| presented_name(n)).collect();
                write!(
                    f,
                    "the server's TLS certificate is for {} (its subjectAltName), but the \
                     endpoint is {host}",
                    names.join(", ")
                )
            }
            C::NotValidForName => write!(
                f,
                "the server's TLS certificate is not for {host}, the endpoint's host"
            ),
            C::ExpiredContext { time, not_after } => write!(
                f,
                "the server's TLS certificate expired on {} (this machine's clock says {})",
                date(*not_after),
                date(*time)
            ),
            C::NotValidYetContext { time, not_before } => write!(
                f,
                "the server's TLS certificate is valid only from {} (this machine's clock \
                 says {})",
                date(*not_before),
                date(*time)
            ),
            C::Expired => write!(f, "the server's TLS certificate has expired"),
            C::NotValidYet => write!(f, "the server's TLS certificate is not valid yet"),
            C::UnknownIssuer if !self.in_bundle => self.write_untrusted(f, false),
            _ if lacks_issuer(&self.cause) && !self.in_bundle => self.write_untrusted(f, true),
            other => write!(f, "the server's TLS certificate did not verify: {other}"),
        }
    }
}

impl StdError for Refusal {}

impl From<Refusal> for rustls::Error {
    fn from(refusal: Refusal) -> rustls::Error {
        CertificateError::Other(OtherError(Arc::new(refusal))).into()
    }
}

/// webpki's presented names (`DnsName("a")`, `IpAddress(1.2.3.4)`) in
/// openssl's terms (`DNS:a`, `IP:1.2.3.4`); anything else as it is.
fn presented_name(name: &str) -> String {
    if let Some(dns) = name
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
    {
        return format!("DNS:{dns}");
    }
    if let Some(ip) = name
        .strip_prefix("IpAddress(")
        .and_then(|n| n.strip_suffix(')'))
    {
        return format!("IP:{ip}");
    }
    name.to_string()
}

/// A time for messages, as RFC 3339 in UTC.
fn date(time: UnixTime) -> String {
    let secs = time.as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| {
            aws_smithy_types::DateTime::from_secs(s)
                .fmt(aws_smithy_types::date_time::Format::DateTime)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (Unix time)"))
}

/// A TLS handshake that failed on a connection trusting a CA bundle.
#[derive(Debug)]
struct Handshake {
    bundle: Arc<Path>,
    source: BoxError,
}

impl fmt::Display for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS handshake failed (trusting the system's roots and {})",
            self.bundle.display()
        )
    }
}

impl StdError for Handshake {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// What to tell the user about a request that failed on a connection made
/// by [`client`]: `None` unless its TLS handshake failed.
pub fn explain(err: &(dyn StdError + 'static)) -> Option<String> {
    let failed = chain(err).find_map(|e| e.downcast_ref::<Handshake>())?;
    let tls = chain(failed).find_map(|e| e.downcast_ref::<rustls::Error>());
    Some(match tls {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e)))) => {
            match e.downcast_ref::<Refusal>() {
                Some(refusal) => refusal.to_string(),
                None => format!("{failed}: {e}"),
            }
        }
        Some(e) => format!("{failed}: {e}"),
        None => failed.to_string(),
    })
}

/// `err` and its sources. An `io::Error`'s next is its payload
/// (`get_ref`): its `source()` would skip the payload itself, where
/// tokio-rustls keeps the rustls error.
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
        None => e.source(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    /// `openssl req -x509 -newkey ec … -days 20000 -subj "/O=s3ma
    /// test/CN=127.0.0.1" -addext subjectAltName=IP:127.0.0.1,DNS:localhost`:
    /// CA:TRUE, valid from 2026-12-01T10:51:26Z (a UTCTime) to
    /// 2081-09-03T10:51:26Z (a GeneralizedTime).
    pub(super) const SELF_SIGNED: &str = "-----BEGIN CERTIFICATE-----
MIIBwzCCAWmgAwIBAgIUCbFj9s3HohLwLEGSBfaGJZBq/oEwCgYIKoZIzj0EAwIw
KDESMBAGA1UECgwJczNtYSB0ZXN0MRIwEAYDVQQDDAkxMjcuMC4wLjEwIBcNMjYx
MjAxMTA1MTI2WhgPMjA4MTA5MDMxMDUxMjZaMCgxEjAQBgNVBAoMCXMzbWEgdGVz
dDESMBAGA1UEAwwJMTI3LjAuMC4xMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
77CPikkr/jm6kSy5upLylDxcuHwderBtzwRQ+4U03r15in605FZtgiD+HAcH+Vpf
0ir4JBvxHpbLXBD8WS7iZ6NvMG0wHQYDVR0OBBYEFPcBPguDAEEbqjoTVFQDVXuX
G5/NMB8GA1UdIwQYMBaAFPcBPguDAEEbqjoTVFQDVXuXG5/NMA8GA1UdEwEB/wQF
MAMBAf8wGgYDVR0RBBMwEYcEfwAAAYIJbG9jYWxob3N0MAoGCCqGSM49BAMCA0gA
MEUCIQD19T2Xj89d5vwyonOnJMUANLhnyknYsX3gZRJnd3c25QIgUxxW7T2Hq+8S
Zc6TIKYh4MJ/JRdgUSzb4Z29TULaEq4=
-----END CERTIFICATE-----
";
    pub(super) const NOT_BEFORE: u64 = 1_796_122_286;
    pub(super) const NOT_AFTER: u64 = 3_524_122_286;

    /// Another self-signed certificate, for `other.example`.
    const OTHER: &str = "-----BEGIN CERTIFICATE-----
MIIBoTCCAUegAwIBAgIUWoAx5/3MGXl4yp297u13S9oBKQgwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNb3RoZXIuZXhhbXBsZTAgFw0yNjEyMDExMDUyNTFaGA8yMDgx
MDkwMzEwNTI1MVowGDEWMBQGA1UEAwwNb3RoZXIuZXhhbXBsZTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABLAAI5T6O+w8HWmWvdRCfeidUNzCOIwcniBAdhPB1nLs
u1Ch1laUz5dRyOeGolaqkd81WS9Gg1WvIUv7CTyPh/WjbTBrMB0GA1UdDgQWBBSD
lm2FanX9H0ApfWmgpe3CzY8pczAfBgNVHSMEGDAWgBSDlm2FanX9H0ApfWmgpe3C
zY8pczAPBgNVHRMBAf8EBTADAQH/MBgGA1UdEQQRMA+CDW90aGVyLmV4YW1wbGUw
CgYIKoZIzj0EAwIDSAAwRQIgCEhPktMXAlsyFe2boVZhSkHmYqIDsPYLFa8BzUAo
XRcCIQCG7ZUBp1z4N0SSjAiG9r0Q1uDza9E5/FBLZzasKRc5+A==
-----END CERTIFICATE-----
";

    pub(super) fn cert(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
    }

    /// A verifier trusting only the bundle of `pems` (no system roots, so
    /// the outcome does not depend on the machine).
    fn verifier(pems: &[&str]) -> BundleVerifier {
        let bundle = Bundle {
            path: Path::new("/etc/s3ma/ca.pem").into(),
            certs: pems.iter().map(|p| cert(p)).collect(),
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(bundle.certs.iter().cloned());
        BundleVerifier::new(bundle, roots, Arc::new(provider())).expect("verifier")
    }

    /// The message for `cert` presented for `host` at Unix time `now`, or
    /// `None` when it is accepted.
    fn verify(
        v: &BundleVerifier,
        cert: &CertificateDer<'_>,
        host: &str,
        now: u64,
    ) -> Option<String> {
        let name = ServerName::try_from(host.to_string()).expect("server name");
        let err = v
            .verify_server_cert(cert, &[], &name, &[], unix_time(now))
            .err()?;
        let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) = &err else {
            panic!("not a refusal: {err:?}");
        };
        Some(e.to_string())
    }

    const NOW: u64 = NOT_BEFORE + 86_400;

    #[test]
    fn a_self_signed_ca_in_the_bundle_is_accepted_for_its_names() {
        let v = verifier(&[OTHER, SELF_SIGNED]);
        let c = cert(SELF_SIGNED);
        assert_eq!(verify(&v, &c, "127.0.0.1", NOW), None);
        assert_eq!(verify(&v, &c, "localhost", NOW), None);
    }

    #[test]
    fn a_pinned_certificate_must_name_the_host() {
        let v = verifier(&[SELF_SIGNED]);
        let msg = verify(&v, &cert(SELF_SIGNED), "other.example", NOW).expect("refused");
        assert_eq!(
            msg,
            "the server's TLS certificate is for IP:127.0.0.1, DNS:localhost (its \
             subjectAltName), but the endpoint is other.example"
        );
    }

    #[test]
    fn a_pinned_certificate_must_be_valid_now() {
        let v = verifier(&[SELF_SIGNED]);
        let c = cert(SELF_SIGNED);
        let msg = verify(&v, &c, "127.0.0.1", NOT_AFTER + 1).expect("refused");
        assert!(
            msg.starts_with("the server's TLS certificate expired on 2081-09-03T10:51:26Z"),
            "{msg}"
        );
        let msg = verify(&v, &c, "127.0.0.1", NOT_BEFORE - 1).expect("refused");
        assert!(
            msg.starts_with("the server's TLS certificate is valid only from 2026-12-01T10:51:26Z"),
            "{msg}"
        );
        assert_eq!(verify(&v, &c, "127.0.0.1", NOT_AFTER), None);
        assert_eq!(verify(&v, &c, "127.0.0.1", NOT_BEFORE), None);
    }

    #[test]
    fn a_certificate_not_in_the_bundle_is_named_as_such() {
        let v = verifier(&[OTHER]);
        let msg = verify(&v, &cert(SELF_SIGNED), "127.0.0.1", NOW).expect("refused");
        assert_eq!(
            msg,
            "the server's TLS certificate (CN=127.0.0.1, self-signed) is not one of the \
             certificates in /etc/s3ma/ca.pem"
        );
    }

    #[test]
    fn refusals_are_found_through_the_io_errors_that_carry_them() {
        let refusal = Refusal {
            bundle: Path::new("/ca.pem").into(),
            host: "127.0.0.1".into(),
            cert: None,
            in_bundle: false,
            cause: CertificateError::UnknownIssuer.into(),
        };
        let tls: rustls::Error = refusal.into();
        let io = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        let failed = Handshake {
            bundle: Path::new("/ca.pem").into(),
            source: Box::new(io),
        };
        let err = aws_smithy_runtime_api::client::result::ConnectorError::io(Box::new(failed));
        assert_eq!(
            explain(&err).as_deref(),
            Some(
                "the server's TLS certificate (unreadable) is not issued by any certificate in \
                 /ca.pem or the system's roots, nor is it one of them"
            )
        );
        assert_eq!(explain(&std::io::Error::other("refused")), None);
    }
}
