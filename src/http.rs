//! HTTP agents for OpenCTI (the stream, attached files and GraphQL), set up
//! as pycti sets up its requests: the TLS settings of the config
//! (verification on by default, `opencti.ca_file` and
//! `HTTPS_CA_CERTIFICATES` added to the trusted roots, an explicit opt-out
//! with `opencti.ssl_verify: false`), the proxy the environment names for
//! OpenCTI's URL (chosen in `config`), and `OPENCTI_CUSTOM_HEADERS` on every
//! request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{ExtraCa, OpenCti};

/// An agent whose reads fail after `read_timeout` without a byte.
pub fn agent(opencti: &OpenCti, read_timeout: Duration) -> Result<ureq::Agent> {
    Ok(agent_builder(opencti, read_timeout)?.build())
}

/// The agent for attached files: keeps up to `connections` connections to
/// OpenCTI alive, one per request in flight, so that a file costs one round
/// trip rather than a TCP (and TLS) handshake too.
pub fn files_agent(opencti: &OpenCti, connections: usize) -> Result<ureq::Agent> {
    Ok(agent_builder(opencti, Duration::from_secs(30))?
        .max_idle_connections(connections)
        .max_idle_connections_per_host(connections)
        .build())
}

/// The settings every OpenCTI agent shares. Redirects are never followed:
/// the token goes to the configured OpenCTI's `/stream/` and
/// `/storage/get/` and nowhere else.
fn agent_builder(opencti: &OpenCti, read_timeout: Duration) -> Result<ureq::AgentBuilder> {
    let tls = tls_config(opencti)?;
    let mut builder = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(read_timeout)
        .timeout_write(Duration::from_secs(30))
        .redirects(0)
        .user_agent(concat!(
            "opencti-stream-exporter/",
            env!("CARGO_PKG_VERSION")
        ))
        .tls_config(Arc::new(tls));
    // The proxy was chosen for OpenCTI's URL in `config` (NO_PROXY
    // included); ureq's own environment lookup would ignore NO_PROXY.
    if let Some(proxy) = &opencti.proxy {
        let proxy = ureq::Proxy::new(proxy.expose()).map_err(|_| {
            anyhow::anyhow!(
                "the proxy for `{}` from the environment is not a usable `http://[user:password@]host:port` URL",
                opencti.url
            )
        })?;
        builder = builder.proxy(proxy);
    }
    if !opencti.custom_headers.is_empty() {
        builder = builder.middleware(CustomHeaders(
            opencti
                .custom_headers
                .iter()
                .map(|(n, v)| (n.clone(), v.expose().to_string()))
                .collect(),
        ));
    }
    Ok(builder)
}

/// Adds `OPENCTI_CUSTOM_HEADERS` to every request of an agent.
struct CustomHeaders(Vec<(String, String)>);

impl ureq::Middleware for CustomHeaders {
    fn handle(
        &self,
        mut request: ureq::Request,
        next: ureq::MiddlewareNext,
    ) -> Result<ureq::Response, ureq::Error> {
        for (name, value) in &self.0 {
            request = request.set(name, value);
        }
        next.handle(request)
    }
}

/// The PEM certificates of `HTTPS_CA_CERTIFICATES` (inline or a file).
fn extra_ca_certs(ca: &ExtraCa) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let (certs, what) = match ca {
        ExtraCa::Inline(pem) => (
            CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>(),
            "`HTTPS_CA_CERTIFICATES` (inline PEM)".to_string(),
        ),
        ExtraCa::File(path) => (
            CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<Vec<_>, _>>()),
            format!("`HTTPS_CA_CERTIFICATES` `{}`", path.display()),
        ),
    };
    let certs = certs.map_err(|e| anyhow::anyhow!("{what}: not PEM certificates ({e})"))?;
    if certs.is_empty() {
        anyhow::bail!("{what} holds no certificate");
    }
    Ok(certs)
}

fn tls_config(opencti: &OpenCti) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS setup")?;
    if !opencti.ssl_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &opencti.ca_file {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                anyhow::anyhow!(
                    "`opencti.ca_file` `{}`: not a PEM certificate file ({e})",
                    ca.display()
                )
            })?;
        if certs.is_empty() {
            anyhow::bail!("`opencti.ca_file` `{}` holds no certificate", ca.display());
        }
        for c in certs {
            roots.add(c).with_context(|| {
                format!("`opencti.ca_file` `{}`: unusable certificate", ca.display())
            })?;
        }
    }
    if let Some(ca) = &opencti.extra_ca_pem {
        for c in extra_ca_certs(ca)? {
            roots
                .add(c)
                .context("`HTTPS_CA_CERTIFICATES`: unusable certificate")?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Accepts any certificate: only with `opencti.ssl_verify: false`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Percent-encodes a storage path for a URL, keeping `/` between segments.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 16);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_spaces_and_non_ascii_but_keeps_slashes() {
        assert_eq!(
            encode_path("storage/get/import/Malware/a2/rapport été-3.pdf"),
            "storage/get/import/Malware/a2/rapport%20%C3%A9t%C3%A9-3.pdf"
        );
        assert_eq!(encode_path("a%b?c#d"), "a%25b%3Fc%23d");
    }
}
