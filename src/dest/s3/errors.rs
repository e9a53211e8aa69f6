//! Failure classification for the S3 destination: every error of the
//! `minio` crate, the network stack or TLS sorted into transient (retry) or
//! permanent (stop the run), worded with the operation, the target, the
//! endpoint, the S3 error code and, where one is obvious, the fix (a hint
//! named after the configuration key). Pure: the adapter calls it; retrying
//! is the caller's business (`retry`).

use std::time::Duration;

use minio::s3::error::{Error as MinioError, NetworkError, S3ServerError, ValidationErr};
use minio::s3::minio_error_response::MinioErrorCode;

use super::strip_prefix_ignore_case;

/// Hints, named after the configuration keys an operator can change.
/// Hints, named after the configuration keys an operator can change.
pub(super) const HINT_CREDENTIALS: &str = "check `minio.access_key` / `minio.secret_key`";
pub(super) const HINT_PERMISSIONS: &str =
    "check `minio.access_key` / `minio.secret_key` and that this key may read, write, list and delete in the bucket";
pub(super) const HINT_CERT: &str = "check `minio.cert_check` / `minio.ca_file`";
pub(super) const HINT_TLS: &str =
    "check `minio.secure` and the endpoint scheme: the server may not speak TLS on this port";
pub(super) const HINT_PLAIN_HTTP: &str =
    "check `minio.endpoint` and `minio.secure`: the answer did not come from an S3 server speaking this protocol";
pub(super) const HINT_BAD_REQUEST: &str =
    "check `minio.endpoint`, `minio.secure` and `minio.region`";
pub(super) const HINT_BUCKET: &str = "check `minio.bucket`";
pub(super) const HINT_BUCKET_GONE: &str =
    "the bucket was removed after the exporter found or created it: check `minio.bucket` / `dead_letter.bucket`, then run again (a missing bucket is created before its first upload)";
pub(super) const HINT_BUCKET_TAKEN: &str =
    "the name belongs to another account: choose another `minio.bucket`";
pub(super) const HINT_REGION: &str = "check `minio.region`";
pub(super) const HINT_CLOCK: &str = "check this machine's clock";
pub(super) const HINT_UNREACHABLE: &str =
    "check that the server is running and that `minio.endpoint` / `minio.port` point to it";
pub(super) const HINT_DNS: &str = "check `minio.endpoint`";

/// Whether the same call may succeed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Transient,
    Permanent,
}

/// One failed call, classified, before it is worded for an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub(super) class: Class,
    /// The S3 error code (`SignatureDoesNotMatch`, `HTTP 503`), or a short
    /// name for a failure below HTTP (`connection refused`, `timeout`).
    pub(super) code: String,
    /// What the server or the network stack said.
    pub(super) detail: String,
    pub(super) hint: Option<&'static str>,
}

impl Failure {
    pub(super) fn permanent(code: &str, detail: &str, hint: Option<&'static str>) -> Failure {
        Failure {
            class: Class::Permanent,
            code: code.to_string(),
            detail: detail.to_string(),
            hint,
        }
    }

    pub(super) fn timeout(limit: Duration) -> Failure {
        Failure {
            class: Class::Transient,
            code: "timeout".to_string(),
            detail: format!("no answer within {}", crate::text::duration(limit)),
            hint: None,
        }
    }

    /// ``<op> `<target>` at `<endpoint>`: <code>: <detail>; <hint>``
    pub(super) fn message(&self, op: &str, target: &str, endpoint: &str) -> String {
        let detail = self.detail.trim().trim_end_matches('.');
        let mut text = format!("{op} `{target}` at `{endpoint}`: {}", self.code);
        if !detail.is_empty() && detail != self.code {
            text.push_str(": ");
            text.push_str(detail);
        }
        if let Some(hint) = self.hint {
            text.push_str("; ");
            text.push_str(hint);
        }
        text
    }

    /// Classifies an error of the `minio` crate.
    pub(super) fn from_minio(err: &MinioError) -> Failure {
        match err {
            MinioError::S3Server(S3ServerError::S3Error(resp)) => {
                let code = match resp.code() {
                    // The crate lower-cases the codes it does not know.
                    MinioErrorCode::OtherError(text) => canonical_code(&text),
                    known => known.to_string(),
                };
                let detail = resp.message().clone().unwrap_or_default();
                let (class, hint) = classify_code(&code);
                Failure {
                    class,
                    code,
                    detail,
                    hint,
                }
            }
            MinioError::S3Server(S3ServerError::InvalidServerResponse {
                message,
                http_status_code,
                ..
            }) => Failure {
                class: classify_status(*http_status_code),
                code: format!("HTTP {http_status_code}"),
                detail: format!("unexpected answer: {message}"),
                hint: Some(HINT_PLAIN_HTTP),
            },
            MinioError::S3Server(S3ServerError::HttpError(status, body)) => Failure {
                class: classify_status(*status),
                code: format!("HTTP {status}"),
                detail: first_line(body),
                hint: None,
            },
            MinioError::Network(NetworkError::ServerError(status)) => Failure {
                class: classify_status(*status),
                code: format!("HTTP {status}"),
                detail: String::new(),
                hint: None,
            },
            MinioError::Network(NetworkError::ReqwestError(e))
            | MinioError::Validation(ValidationErr::HttpError(e)) => {
                let mut failure = from_cause_chain(err);
                // A request that could not even be built (a header value
                // refused, say) fails the same way every time.
                if failure.code == "network error" && e.is_builder() {
                    failure.class = Class::Permanent;
                    failure.code = "invalid request".to_string();
                }
                failure
            }
            MinioError::Validation(ValidationErr::ChecksumMismatch { .. })
            | MinioError::Validation(ValidationErr::CrcMismatch { .. }) => Failure {
                class: Class::Transient,
                code: "checksum mismatch".to_string(),
                detail: cause_text(err),
                hint: None,
            },
            MinioError::Validation(ValidationErr::IOError(_)) | MinioError::DriveIo(_) => {
                from_cause_chain(err)
            }
            MinioError::Validation(ValidationErr::InvalidBucketName { .. }) => {
                Failure::permanent("InvalidBucketName", &cause_text(err), Some(HINT_BUCKET))
            }
            // An answer that is not the XML an S3 server sends.
            MinioError::Validation(
                ValidationErr::XmlParseError(_)
                | ValidationErr::XmlError { .. }
                | ValidationErr::StrError { .. }
                | ValidationErr::IntError(_)
                | ValidationErr::Utf8Error(_)
                | ValidationErr::TimeParseError(_),
            ) => Failure::permanent(
                "InvalidServerResponse",
                &cause_text(err),
                Some(HINT_PLAIN_HTTP),
            ),
            MinioError::Validation(v) => {
                Failure::permanent("invalid request", &v.to_string(), None)
            }
        }
    }
}

/// S3 error codes as servers spell them, for the ones the `minio` crate
/// hands over in lower case; also every code [`classify_code`] knows.
pub(super) const KNOWN_CODES: &[&str] = &[
    "AccessDenied",
    "AccountProblem",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "BadDigest",
    "BadRequest",
    "BucketAlreadyExists",
    "BucketAlreadyOwnedByYou",
    "EntityTooLarge",
    "EntityTooSmall",
    "ExpiredToken",
    "IllegalLocationConstraintException",
    "IncompleteBody",
    "InternalError",
    "InvalidAccessKeyId",
    "InvalidArgument",
    "InvalidBucketName",
    "InvalidDigest",
    "InvalidObjectName",
    "InvalidRegion",
    "InvalidRequest",
    "InvalidToken",
    "KeyTooLongError",
    "MalformedXML",
    "MethodNotAllowed",
    "MissingContentLength",
    "MissingContentMD5",
    "NoSuchBucket",
    "NoSuchKey",
    "NotImplemented",
    "OperationAborted",
    "PermanentRedirect",
    "PreconditionFailed",
    "QuotaExceeded",
    "Redirect",
    "RequestLimitExceeded",
    "RequestTimeTooSkewed",
    "RequestTimeout",
    "ServiceUnavailable",
    "SignatureDoesNotMatch",
    "SlowDown",
    "SlowDownRead",
    "SlowDownWrite",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "TooManyRequestsException",
    "XAmzContentChecksumMismatch",
    "XAmzContentSHA256Mismatch",
    "XMinioErasureReadQuorum",
    "XMinioErasureWriteQuorum",
    "XMinioServerNotInitialized",
    "XMinioStorageFull",
];

/// `code` spelled as servers do when it is a known code, else unchanged.
pub(super) fn canonical_code(code: &str) -> String {
    KNOWN_CODES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(code))
        .map_or_else(|| code.to_string(), |known| known.to_string())
}

/// Transient or permanent, and a hint, for an S3 error code.
pub(super) fn classify_code(code: &str) -> (Class, Option<&'static str>) {
    if let Some(status) = strip_prefix_ignore_case(code, "HTTP ").and_then(|s| s.parse().ok()) {
        return (classify_status(status), None);
    }
    match canonical_code(code).as_str() {
        // Server busy or briefly broken: the same request may succeed later.
        "SlowDown"
        | "SlowDownRead"
        | "SlowDownWrite"
        | "InternalError"
        | "ServiceUnavailable"
        | "RequestTimeout"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequests"
        | "TooManyRequestsException"
        | "OperationAborted"
        | "XMinioServerNotInitialized"
        | "XMinioErasureReadQuorum"
        | "XMinioErasureWriteQuorum" => (Class::Transient, None),
        // The body arrived damaged: sending it again is the fix.
        "BadDigest"
        | "XAmzContentSHA256Mismatch"
        | "XAmzContentChecksumMismatch"
        | "IncompleteBody" => (Class::Transient, None),
        "SignatureDoesNotMatch" | "InvalidAccessKeyId" | "InvalidToken" | "ExpiredToken" => {
            (Class::Permanent, Some(HINT_CREDENTIALS))
        }
        "AccessDenied" | "AllAccessDisabled" | "AccountProblem" => {
            (Class::Permanent, Some(HINT_PERMISSIONS))
        }
        "RequestTimeTooSkewed" => (Class::Permanent, Some(HINT_CLOCK)),
        // What the crate calls a bodiless 400, e.g. plain http to a TLS port.
        "BadRequest" => (Class::Permanent, Some(HINT_BAD_REQUEST)),
        "NoSuchBucket" => (Class::Permanent, Some(HINT_BUCKET_GONE)),
        "InvalidBucketName" => (Class::Permanent, Some(HINT_BUCKET)),
        "BucketAlreadyExists" => (Class::Permanent, Some(HINT_BUCKET_TAKEN)),
        "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException"
        | "InvalidRegion"
        | "PermanentRedirect"
        | "Redirect" => (Class::Permanent, Some(HINT_REGION)),
        // Anything else is a refusal of this request as it stands: retrying
        // the same bytes would loop, so stop and show the code.
        _ => (Class::Permanent, None),
    }
}

/// Transient for server-side trouble (5xx), throttling (429) and request
/// timeouts (408); permanent for every other refusal.
pub(super) fn classify_status(status: u16) -> Class {
    match status {
        408 | 429 | 500..=599 => Class::Transient,
        _ => Class::Permanent,
    }
}

/// Whether a code says the server did not accept who we are (used to replace
/// the bare `AccessDenied` of a HEAD by the code the server really gave).
pub(super) fn is_credential_code(code: &str) -> bool {
    matches!(
        code,
        "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "InvalidToken"
            | "ExpiredToken"
            | "RequestTimeTooSkewed"
            | "AuthorizationHeaderMalformed"
            | "AccessDenied"
    )
}

/// Classifies a failure below HTTP by walking the chain of causes: the
/// crate's own text is only "Validation error occurred".
pub(super) fn from_cause_chain(err: &(dyn std::error::Error + 'static)) -> Failure {
    let detail = cause_text(err);
    let mut found: Option<Failure> = None;
    for cause in causes(err) {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                    HINT_CERT
                }
                _ => HINT_TLS,
            };
            let code = if hint == HINT_CERT {
                "TLS certificate rejected"
            } else {
                "TLS error"
            };
            // Certificates are not fixed by waiting: this wins over the io
            // error that carries it.
            return Failure::permanent(code, &detail, Some(hint));
        }
        if found.is_some() {
            continue;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let (code, hint) = match io.kind() {
                K::ConnectionRefused => ("connection refused", Some(HINT_UNREACHABLE)),
                K::ConnectionReset
                | K::ConnectionAborted
                | K::BrokenPipe
                | K::UnexpectedEof
                | K::NotConnected => ("connection lost", None),
                K::TimedOut => ("timeout", None),
                K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                    ("host unreachable", Some(HINT_UNREACHABLE))
                }
                _ => continue,
            };
            found = Some(Failure {
                class: Class::Transient,
                code: code.to_string(),
                detail: detail.clone(),
                hint,
            });
        } else if cause.to_string().starts_with("dns error") {
            // hyper's resolver error, known only by its text.
            found = Some(Failure {
                class: Class::Transient,
                code: "DNS lookup failed".to_string(),
                detail: detail.clone(),
                hint: Some(HINT_DNS),
            });
        }
    }
    if detail.contains("invalid peer certificate") {
        // A rustls error that reached us only as text.
        return Failure::permanent("TLS certificate rejected", &detail, Some(HINT_CERT));
    }
    found.unwrap_or(Failure {
        class: Class::Transient,
        code: "network error".to_string(),
        detail,
        hint: None,
    })
}

/// `err` and its causes, looking inside `io::Error`s (whose `source()` skips
/// the error they wrap).
pub(super) fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut chain = Vec::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        chain.push(cause);
        next = match cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        };
        if chain.len() > 32 {
            break;
        }
    }
    chain
}

/// The chain of causes as one line, without the generic wrappers of the
/// `minio` crate and without a wrapper that only repeats its cause.
pub(super) fn cause_text(err: &(dyn std::error::Error + 'static)) -> String {
    const GENERIC: [&str; 3] = [
        "Validation error occurred",
        "Network error occurred",
        "Drive IO error occurred",
    ];
    let texts: Vec<String> = causes(err).iter().map(|e| e.to_string()).collect();
    let mut kept: Vec<&str> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let repeats_next = texts
            .get(i + 1)
            .is_some_and(|next| !next.is_empty() && text.contains(next.as_str()));
        // reqwest's "error sending request for url (...)" only repeats the
        // endpoint and key that the message names anyway.
        let request_wrapper = text.starts_with("error sending request") && i + 1 < texts.len();
        if GENERIC.contains(&text.as_str()) || repeats_next || request_wrapper || text.is_empty() {
            continue;
        }
        kept.push(text);
    }
    kept.dedup();
    kept.join(": ")
}

pub(super) fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_codes_are_classified() {
        use Class::*;
        let cases: &[(&str, Class, Option<&str>)] = &[
            ("SlowDown", Transient, None),
            ("InternalError", Transient, None),
            ("ServiceUnavailable", Transient, None),
            ("RequestTimeout", Transient, None),
            ("BadDigest", Transient, None),
            ("baddigest", Transient, None),
            ("BadRequest", Permanent, Some(HINT_BAD_REQUEST)),
            ("XAmzContentChecksumMismatch", Transient, None),
            ("HTTP 503", Transient, None),
            ("HTTP 429", Transient, None),
            ("HTTP 404", Permanent, None),
            ("SignatureDoesNotMatch", Permanent, Some(HINT_CREDENTIALS)),
            ("InvalidAccessKeyId", Permanent, Some(HINT_CREDENTIALS)),
            ("AccessDenied", Permanent, Some(HINT_PERMISSIONS)),
            ("NoSuchBucket", Permanent, Some(HINT_BUCKET_GONE)),
            ("InvalidBucketName", Permanent, Some(HINT_BUCKET)),
            ("BucketAlreadyExists", Permanent, Some(HINT_BUCKET_TAKEN)),
            ("AuthorizationHeaderMalformed", Permanent, Some(HINT_REGION)),
            ("RequestTimeTooSkewed", Permanent, Some(HINT_CLOCK)),
            ("EntityTooLarge", Permanent, None),
            ("SomethingNew", Permanent, None),
        ];
        for (code, class, hint) in cases {
            assert_eq!(classify_code(code), (*class, *hint), "{code}");
        }
    }

    #[test]
    fn http_statuses_are_classified() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify_status(status), Class::Transient, "{status}");
        }
        for status in [400, 401, 403, 404, 405, 409, 411, 413] {
            assert_eq!(classify_status(status), Class::Permanent, "{status}");
        }
    }

    fn s3_error(code: &str, message: &str) -> MinioError {
        let resp = minio::s3::minio_error_response::MinioErrorResponse::new(
            Default::default(),
            code.parse().unwrap(),
            Some(message.to_string()),
            "/exports/k".to_string(),
            String::new(),
            String::new(),
            None,
            None,
        );
        MinioError::S3Server(S3ServerError::S3Error(Box::new(resp)))
    }

    #[test]
    fn server_errors_keep_the_code_as_spelled() {
        let f = Failure::from_minio(&s3_error("SignatureDoesNotMatch", "The signature."));
        assert_eq!(f.class, Class::Permanent);
        assert_eq!(f.code, "SignatureDoesNotMatch");
        // What the crate makes of a code it does not know: lower case.
        let resp = minio::s3::minio_error_response::MinioErrorResponse::new(
            Default::default(),
            MinioErrorCode::OtherError("xamzcontentchecksummismatch".to_string()),
            None,
            String::new(),
            String::new(),
            String::new(),
            None,
            None,
        );
        let f = Failure::from_minio(&MinioError::S3Server(S3ServerError::S3Error(Box::new(
            resp,
        ))));
        assert_eq!(
            (f.class, f.code.as_str()),
            (Class::Transient, "XAmzContentChecksumMismatch")
        );
        let f = Failure::from_minio(&s3_error("NoSuchBucket", "gone"));
        assert_eq!(
            (f.class, f.code.as_str()),
            (Class::Permanent, "NoSuchBucket")
        );
        let f = Failure::from_minio(&s3_error("SlowDown", "Please reduce your request rate."));
        assert_eq!((f.class, f.code.as_str()), (Class::Transient, "SlowDown"));
        let f = Failure::from_minio(&MinioError::Network(NetworkError::ServerError(503)));
        assert_eq!((f.class, f.code.as_str()), (Class::Transient, "HTTP 503"));
        let f = Failure::from_minio(&MinioError::Network(NetworkError::ServerError(400)));
        assert_eq!(f.class, Class::Permanent);
    }

    #[test]
    fn io_causes_are_found_below_the_generic_wrapper() {
        let refused = MinioError::Validation(ValidationErr::IOError(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )));
        assert_eq!(refused.to_string(), "Validation error occurred");
        let f = Failure::from_minio(&refused);
        assert_eq!(f.class, Class::Transient);
        assert_eq!(f.code, "connection refused");
        assert_eq!(f.detail, "Connection refused (os error 111)");
    }

    #[test]
    fn certificate_errors_are_permanent_even_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let err = MinioError::Validation(ValidationErr::IOError(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tls,
        )));
        let f = Failure::from_minio(&err);
        assert_eq!(f.class, Class::Permanent);
        assert_eq!(f.hint, Some(HINT_CERT));
        assert!(
            f.detail.contains("invalid peer certificate"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn messages_name_operation_target_endpoint_code_and_fix() {
        let f = Failure::from_minio(&s3_error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match.",
        ));
        let text = f.message("cannot upload", "s3://exports/a/b.json", "http://h:9000");
        assert_eq!(
            text,
            "cannot upload `s3://exports/a/b.json` at `http://h:9000`: SignatureDoesNotMatch: \
             The request signature we calculated does not match; \
             check `minio.access_key` / `minio.secret_key`"
        );
        let text = Failure::timeout(Duration::from_millis(1500)).message(
            "cannot list",
            "s3://b/p*",
            "http://h:1",
        );
        assert_eq!(
            text,
            "cannot list `s3://b/p*` at `http://h:1`: timeout: no answer within 1500 ms"
        );
    }

    #[test]
    fn cause_text_drops_wrappers_that_repeat_their_cause() {
        let io = std::io::Error::other("tcp connect error");
        let err = MinioError::Validation(ValidationErr::IOError(io));
        assert_eq!(cause_text(&err), "tcp connect error");
    }
}
