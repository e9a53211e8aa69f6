//! HTTP agents for OpenCTI (the stream and attached files), with the TLS
//! settings of the config: verification on by default, an optional CA file,
//! and an explicit opt-out (`opencti.ssl_verify: false`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::OpenCti;

/// An agent whose reads fail after `read_timeout` without a byte.
pub fn agent(opencti: &OpenCti, read_timeout: Duration) -> Result<ureq::Agent> {
    let tls = tls_config(opencti)?;
    Ok(ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(read_timeout)
        .timeout_write(Duration::from_secs(30))
        .redirects(0)
        .user_agent(concat!(
            "opencti-stream-exporter/",
            env!("CARGO_PKG_VERSION")
        ))
        .tls_config(Arc::new(tls))
        .build())
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

/// Fetches attached files from the configured OpenCTI only.
pub struct OpenCtiFiles {
    agent: ureq::Agent,
    base: String,
    auth: String,
    retries: u32,
}

impl OpenCtiFiles {
    /// A fetcher for `opencti`, trying each file `retries` times.
    pub fn new(opencti: &OpenCti, retries: u32) -> Result<Self> {
        Ok(OpenCtiFiles {
            agent: agent(opencti, Duration::from_secs(60))?,
            base: opencti.url.clone(),
            auth: format!("Bearer {}", opencti.token.expose()),
            retries: retries.max(1),
        })
    }
}

impl crate::transform::FileFetcher for OpenCtiFiles {
    fn fetch(&self, storage_path: &str) -> Result<Vec<u8>, String> {
        // Whatever host the uri named, only the configured base URL is used.
        let url = format!(
            "{}/{}",
            self.base,
            encode_path(storage_path.trim_start_matches('/'))
        );
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(300), Duration::from_secs(5));
        let mut last = String::new();
        for attempt in 1..=self.retries {
            match self.agent.get(&url).set("Authorization", &self.auth).call() {
                Ok(resp) => {
                    let mut body = Vec::new();
                    match std::io::Read::read_to_end(&mut resp.into_reader(), &mut body) {
                        Ok(_) => return Ok(body),
                        Err(e) => last = format!("reading `{url}`: {e}"),
                    }
                }
                Err(ureq::Error::Status(code, _)) => {
                    last = format!("`{url}` answered HTTP {code}");
                    if code == 404 || code == 401 || code == 403 {
                        break;
                    }
                }
                Err(e) => last = format!("`{url}`: {}", e.kind()),
            }
            if attempt < self.retries {
                std::thread::sleep(backoff.next_delay());
            }
        }
        Err(last)
    }
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
