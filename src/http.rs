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
pub(crate) fn agent(opencti: &OpenCti, read_timeout: Duration) -> Result<ureq::Agent> {
    Ok(agent_builder(opencti, read_timeout)?.build())
}

/// The agent for attached files: keeps up to `connections` connections to
/// OpenCTI alive, one per request in flight, so that a file costs one round
/// trip rather than a TCP (and TLS) handshake too. A read waits at most
/// `read_timeout` for a byte.
pub(crate) fn files_agent(
    opencti: &OpenCti,
    connections: usize,
    read_timeout: Duration,
) -> Result<ureq::Agent> {
    Ok(agent_builder(opencti, read_timeout)?
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
pub(crate) fn encode_path(path: &str) -> String {
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

/// A transport error as one line, with its cause chain.
pub(crate) fn transport_message(t: &ureq::Transport) -> String {
    let mut msg = format!("{}", t.kind());
    if let Some(m) = t.message() {
        msg.push_str(": ");
        msg.push_str(m);
    }
    let mut src = std::error::Error::source(t);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
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

    /// A CA and a certificate for 127.0.0.1 signed by it (the `openssl`
    /// command, as the integration harness uses): `(ca.pem, leaf.pem, leaf.key)`.
    fn private_ca(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("the `openssl` command");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=unit-ca",
            ][..],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec[..],
            &[
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=127.0.0.1",
            ][..],
        ]
        .concat());
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]);
        (
            std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
            dir.join("leaf.pem"),
            dir.join("leaf.key"),
        )
    }

    /// A TLS server on 127.0.0.1 answering every connection with 200 `ok`;
    /// returns its port.
    fn tls_server(cert: &std::path::Path, key: &std::path::Path) -> u16 {
        use rustls::pki_types::pem::PemObject;
        use std::io::{Read, Write};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let config = config.clone();
                std::thread::spawn(move || {
                    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, sock);
                    let mut buf = [0u8; 4096];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        port
    }

    fn opencti_at(port: u16) -> OpenCti {
        OpenCti {
            url: format!("https://127.0.0.1:{port}"),
            token: crate::secret::Secret::new("t"),
            ssl_verify: true,
            ca_file: None,
            extra_ca_pem: None,
            custom_headers: Vec::new(),
            proxy: None,
        }
    }

    #[test]
    fn https_ca_certificates_inline_or_as_a_file_are_trusted_for_opencti() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, leaf, key) = private_ca(dir.path());
        let port = tls_server(&leaf, &key);
        let get = |o: &OpenCti| -> Result<String, String> {
            agent(o, Duration::from_secs(5))
                .unwrap()
                .get(&format!("{}/x", o.url))
                .call()
                .map(|r| r.into_string().unwrap())
                .map_err(|e| e.to_string())
        };
        let mut o = opencti_at(port);
        let refused = get(&o).unwrap_err();
        assert!(
            refused.to_ascii_lowercase().contains("certificate"),
            "{refused}"
        );
        o.extra_ca_pem = Some(ExtraCa::Inline(ca_pem.clone()));
        assert_eq!(get(&o).unwrap(), "ok");
        o.extra_ca_pem = Some(ExtraCa::File(dir.path().join("ca.pem")));
        assert_eq!(get(&o).unwrap(), "ok");
        // Text that is not PEM certificates is an error, not an empty trust store.
        o.extra_ca_pem = Some(ExtraCa::Inline(
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".into(),
        ));
        let e = match agent(&o, Duration::from_secs(5)) {
            Ok(_) => panic!("bad PEM accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("HTTPS_CA_CERTIFICATES"), "{e}");
    }

    /// A proxy that only tunnels (`CONNECT`), counting the tunnels it opened.
    fn connect_proxy() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let tunnels = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = tunnels.clone();
        std::thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let Some(target) = head
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split(' ').next())
                    else {
                        let _ = client.write_all(
                            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n",
                        );
                        return;
                    };
                    let upstream = std::net::TcpStream::connect(target).unwrap();
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .unwrap();
                    let (mut cr, mut uw) =
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut cr, &mut uw);
                    });
                    let (mut ur, mut cw) = (upstream, client);
                    let _ = std::io::copy(&mut ur, &mut cw);
                    let _ = cw.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        (port, tunnels)
    }

    #[test]
    fn https_to_opencti_goes_through_a_connect_proxy_with_the_extra_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, leaf, key) = private_ca(dir.path());
        let port = tls_server(&leaf, &key);
        let (proxy_port, tunnels) = connect_proxy();
        let mut o = opencti_at(port);
        o.extra_ca_pem = Some(ExtraCa::Inline(ca_pem));
        o.proxy = Some(crate::secret::Secret::new(format!(
            "http://127.0.0.1:{proxy_port}"
        )));
        let body = agent(&o, Duration::from_secs(5))
            .unwrap()
            .get(&format!("{}/x", o.url))
            .call()
            .map_err(|e| e.to_string())
            .unwrap()
            .into_string()
            .unwrap();
        assert_eq!(body, "ok");
        assert_eq!(tunnels.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
