//! AWS Signature Version 4 for the one kind of request the router sends AWS: a POST of
//! a JSON body without a query string (Bedrock's Converse API). Hand-written on sha2
//! and hmac (both already built for sqlx's PostgreSQL authentication) rather than the
//! AWS SDK, whose dependency tree would cost more to compile than the whole router.
//!
//! The steps are AWS's published ones: a canonical request (method, the path with
//! each segment URI-encoded once more, no query, the signed headers, the body's
//! SHA-256), the string to sign with the credential scope
//! `<date>/<region>/<service>/aws4_request`, the signing key derived from the secret
//! through date, region and service, the signature in the `Authorization` header.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use helix_runtime::config::Secret;

/// Long-lived or temporary credentials and the region they sign for.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// for temporary credentials (`AWS_SESSION_TOKEN`): sent and signed as
    /// `x-amz-security-token`
    pub session_token: Option<Secret>,
    pub region: String,
}

/// What a request signed at `amz_date` (`YYYYMMDDTHHMMSSZ`) must carry: every header
/// besides `host`, which the HTTP client sets from the URL.
pub fn sign(
    credentials: &AwsCredentials,
    service: &str,
    host: &str,
    path: &str,
    body: &[u8],
    amz_date: &str,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![("host", host.to_owned()), ("x-amz-date", amz_date.to_owned())];
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token", token.expose().to_owned()));
    }
    let signed_headers = headers.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(";");
    let canonical_headers: String = headers.iter().map(|(name, value)| format!("{name}:{}\n", value.trim())).collect();
    let canonical_request = format!(
        "POST\n{}\n\n{canonical_headers}\n{signed_headers}\n{}",
        canonical_path(path),
        hex::encode(Sha256::digest(body))
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/{service}/aws4_request", credentials.region);
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical_request)));
    let secret = format!("AWS4{}", credentials.secret_access_key.expose());
    let key = [date, credentials.region.as_str(), service, "aws4_request"]
        .iter()
        .fold(secret.into_bytes(), |key, part| hmac(&key, part.as_bytes()));
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    );
    headers.remove(0);
    headers.push(("authorization", authorization));
    headers
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, as AWS
/// wants it (uppercase hex).
pub fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Every segment of the path as sent, encoded once more (AWS services other than S3
/// sign the path double-encoded: `v1%3A0` is signed as `v1%253A0`).
fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.split('/').map(uri_encode).collect::<Vec<_>>().join("/")
}

/// `YYYYMMDDTHHMMSSZ` of now.
pub fn amz_date() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
            region: "us-east-1".into(),
        }
    }

    /// AWS's published SigV4 test suite (aws-sig-v4-test-suite): `post-vanilla` signs
    /// `POST /` with no body, host and x-amz-date.
    #[test]
    fn the_published_post_vanilla_vector() {
        let headers = sign(&example(), "service", "example.amazonaws.com", "/", b"", "20150830T123600Z");
        assert_eq!(
            headers,
            vec![
                ("x-amz-date", "20150830T123600Z".to_owned()),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, \
                     Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn session_tokens_are_signed_and_paths_double_encoded() {
        let credentials = AwsCredentials { session_token: Some(Secret::new("token")), ..example() };
        let headers = sign(&credentials, "bedrock", "h", "/model/a.b-v1%3A0/converse", b"{}", "20150830T123600Z");
        assert_eq!(headers[1], ("x-amz-security-token", "token".to_owned()));
        assert!(headers[2].1.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"), "{headers:?}");
        assert_eq!(canonical_path("/model/a.b-v1%3A0/converse"), "/model/a.b-v1%253A0/converse");
        assert_eq!(uri_encode("arn:aws:bedrock/x y"), "arn%3Aaws%3Abedrock%2Fx%20y");
    }
}
