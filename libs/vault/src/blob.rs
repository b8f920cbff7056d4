//! The sealed blob: `HXB1`, then how its key is derived, then a nonce and the
//! XChaCha20-Poly1305 ciphertext of the payload.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "HXB1"
//! 4       1     format version (1)
//! 5       1     KDF: 1 = HKDF-SHA256 (key material of >= 32 bytes), 2 = Argon2id (a passphrase)
//! 6       12    Argon2id only: memory KiB, iterations, lanes (u32 little-endian each)
//! ..      16    salt
//! ..      24    nonce
//! ..      >=16  ciphertext with its Poly1305 tag
//! ```
//!
//! Everything before the ciphertext is the AEAD's associated data, so a changed
//! parameter fails authentication like a changed ciphertext byte does. Parsing only
//! reads: it never allocates by a length the file claims, and parameters outside the
//! bounds below are refused before any key is derived (a crafted file cannot make
//! Argon2 allocate gigabytes).

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::Rng;
use sha2::Sha256;
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 4] = b"HXB1";
pub const VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Domain separation of the HKDF output: a key derived for the vault is not a key for
/// anything else made from the same material.
const HKDF_INFO: &[u8] = b"helix vault v1";

/// The most a blob may ask Argon2 for: 1 GiB, 64 passes, 16 lanes.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_LANES: u32 = 16;

/// Why a blob cannot be opened. Never carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("not a Helix vault (it does not start with HXB1)")]
    NotAVault,
    #[error("vault format version {0} is newer than this hx understands (1): upgrade hx")]
    UnsupportedVersion(u8),
    #[error("the vault file is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("the vault header is invalid: {0}")]
    BadHeader(String),
    #[error("the key is wrong or the file was altered (authentication failed)")]
    WrongKeyOrAltered,
}

/// How the blob's key is derived from what the user holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// High-entropy key material (a key file, the OS keyring): HKDF-SHA256.
    Hkdf,
    /// A passphrase: Argon2id with these parameters.
    Argon2id(Argon2Params),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl Default for Argon2Params {
    /// 64 MiB, 3 passes, 1 lane: RFC 9106's second recommendation with one lane (the
    /// argon2 crate runs lanes on one thread). About 0.2 s on one core; bench/ measures it.
    fn default() -> Self {
        Self { memory_kib: 64 * 1024, iterations: 3, lanes: 1 }
    }
}

impl Argon2Params {
    fn check(self) -> Result<Self, BlobError> {
        let bad = |what: String| Err(BlobError::BadHeader(what));
        if self.lanes == 0 || self.lanes > MAX_LANES {
            return bad(format!("Argon2 lanes {} outside 1..={MAX_LANES}", self.lanes));
        }
        if self.iterations == 0 || self.iterations > MAX_ITERATIONS {
            return bad(format!("Argon2 iterations {} outside 1..={MAX_ITERATIONS}", self.iterations));
        }
        if self.memory_kib < 8 * self.lanes || self.memory_kib > MAX_MEMORY_KIB {
            return bad(format!("Argon2 memory {} KiB outside {}..={MAX_MEMORY_KIB}", self.memory_kib, 8 * self.lanes));
        }
        Ok(self)
    }
}

/// The parsed header of a blob, borrowed from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub kdf: Kdf,
    pub salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    /// The bytes the AEAD authenticates without encrypting.
    associated: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> Header<'a> {
    /// Reads the header; the ciphertext is not touched until [`open`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BlobError> {
        let mut at = Reader { bytes, at: 0 };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(BlobError::NotAVault);
        }
        at.at = MAGIC.len();
        let version = at.u8()?;
        if version != VERSION {
            return Err(BlobError::UnsupportedVersion(version));
        }
        let kdf = match at.u8()? {
            1 => Kdf::Hkdf,
            2 => {
                Kdf::Argon2id(Argon2Params { memory_kib: at.u32()?, iterations: at.u32()?, lanes: at.u32()? }.check()?)
            }
            other => return Err(BlobError::BadHeader(format!("unknown key derivation {other}"))),
        };
        let salt = at.array::<SALT_LEN>()?;
        let nonce = at.array::<NONCE_LEN>()?;
        let (associated, ciphertext) = bytes.split_at(at.at);
        if ciphertext.len() < TAG_LEN {
            return Err(BlobError::Truncated(bytes.len()));
        }
        Ok(Self { kdf, salt, nonce, associated, ciphertext })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BlobError> {
        let end = self.at.checked_add(N).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(BlobError::Truncated(self.bytes.len()))?;
        let mut out = [0; N];
        out.copy_from_slice(&self.bytes[self.at..end]);
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, BlobError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, BlobError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
}

/// A derived 256-bit AEAD key; zeroed on drop.
#[derive(Clone)]
pub struct SealingKey {
    key: Zeroizing<[u8; 32]>,
    kdf: Kdf,
    salt: [u8; SALT_LEN],
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey").field("kdf", &self.kdf).finish_non_exhaustive()
    }
}

impl SealingKey {
    /// Derives the key for `kdf` and `salt` from what the user holds: key material for
    /// HKDF, a passphrase for Argon2id.
    pub fn derive(kdf: Kdf, salt: [u8; SALT_LEN], secret: &[u8]) -> Result<Self, BlobError> {
        let mut key = Zeroizing::new([0u8; 32]);
        match kdf {
            Kdf::Hkdf => Hkdf::<Sha256>::new(Some(&salt), secret)
                .expand(HKDF_INFO, key.as_mut())
                .map_err(|_| BlobError::BadHeader("HKDF output length".into()))?,
            Kdf::Argon2id(params) => {
                let params = params.check()?;
                let params = Params::new(params.memory_kib, params.iterations, params.lanes, Some(32))
                    .map_err(|e| BlobError::BadHeader(format!("Argon2 parameters: {e}")))?;
                Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                    .hash_password_into(secret, &salt, key.as_mut())
                    .map_err(|e| BlobError::BadHeader(format!("Argon2: {e}")))?
            }
        }
        Ok(Self { key, kdf, salt })
    }

    /// A key for a new blob: fresh salt.
    pub fn fresh(kdf: Kdf, secret: &[u8]) -> Result<Self, BlobError> {
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill(&mut salt);
        Self::derive(kdf, salt, secret)
    }

    /// Whether this key was derived for `header` (same KDF, parameters and salt), so a
    /// reload after another process's write needs no new Argon2 run.
    pub fn fits(&self, header: &Header<'_>) -> bool {
        self.kdf == header.kdf && self.salt == header.salt
    }

    pub fn kdf(&self) -> Kdf {
        self.kdf
    }

    /// Seals `plaintext` under this key with a fresh nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let mut blob = Vec::with_capacity(64 + plaintext.len() + TAG_LEN);
        blob.extend_from_slice(MAGIC);
        blob.push(VERSION);
        match self.kdf {
            Kdf::Hkdf => blob.push(1),
            Kdf::Argon2id(p) => {
                blob.push(2);
                for value in [p.memory_kib, p.iterations, p.lanes] {
                    blob.extend_from_slice(&value.to_le_bytes());
                }
            }
        }
        blob.extend_from_slice(&self.salt);
        blob.extend_from_slice(&nonce);
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let ciphertext = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &blob })
            .expect("XChaCha20-Poly1305 encrypts any length this process can hold");
        blob.extend_from_slice(&ciphertext);
        blob
    }

    /// Opens a blob sealed under this key.
    pub fn open(&self, header: &Header<'_>) -> Result<Zeroizing<Vec<u8>>, BlobError> {
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        cipher
            .decrypt(XNonce::from_slice(&header.nonce), Payload { msg: header.ciphertext, aad: header.associated })
            .map(Zeroizing::new)
            .map_err(|_| BlobError::WrongKeyOrAltered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Kdf = Kdf::Argon2id(Argon2Params { memory_kib: 64, iterations: 1, lanes: 1 });

    fn sealed(kdf: Kdf, secret: &[u8], plaintext: &[u8]) -> Vec<u8> {
        SealingKey::fresh(kdf, secret).unwrap().seal(plaintext)
    }

    fn open(blob: &[u8], secret: &[u8]) -> Result<Vec<u8>, BlobError> {
        let header = Header::parse(blob)?;
        let key = SealingKey::derive(header.kdf, header.salt, secret)?;
        key.open(&header).map(|p| p.to_vec())
    }

    #[test]
    fn round_trips_under_both_kdfs() {
        for kdf in [Kdf::Hkdf, CHEAP] {
            let blob = sealed(kdf, b"0123456789abcdef0123456789abcdef", b"{\"a\":1}");
            assert_eq!(open(&blob, b"0123456789abcdef0123456789abcdef").unwrap(), b"{\"a\":1}");
            assert_eq!(open(&blob, b"0123456789abcdef0123456789abcdeF"), Err(BlobError::WrongKeyOrAltered));
        }
    }

    /// Every single flipped bit of a blob, and every truncation, is an error and never
    /// a panic or a different plaintext.
    #[test]
    fn every_flipped_bit_and_truncation_is_refused() {
        for kdf in [Kdf::Hkdf, CHEAP] {
            let blob = sealed(kdf, b"correct horse battery staple", b"secret payload");
            for at in 0..blob.len() {
                for bit in 0..8 {
                    let mut altered = blob.clone();
                    altered[at] ^= 1 << bit;
                    let opened = open(&altered, b"correct horse battery staple");
                    assert!(opened.is_err(), "byte {at} bit {bit} of {kdf:?} opened: {opened:?}");
                }
            }
            for len in 0..blob.len() {
                assert!(open(&blob[..len], b"correct horse battery staple").is_err(), "truncated to {len}");
            }
        }
    }

    #[test]
    fn headers_are_checked_before_any_key_is_derived() {
        let cases: &[(&[u8], BlobError)] = &[
            (b"", BlobError::NotAVault),
            (b"PK\x03\x04", BlobError::NotAVault),
            (b"HXB1", BlobError::Truncated(4)),
            (b"HXB1\x02\x01", BlobError::UnsupportedVersion(2)),
            (b"HXB1\x01\x07", BlobError::BadHeader("unknown key derivation 7".into())),
        ];
        for (bytes, expected) in cases {
            assert_eq!(Header::parse(bytes).unwrap_err(), *expected, "{bytes:?}");
        }
        // a crafted 4 GiB Argon2 request
        let mut greedy = b"HXB1\x01\x02".to_vec();
        for value in [u32::MAX, 1, 1] {
            greedy.extend_from_slice(&value.to_le_bytes());
        }
        greedy.extend_from_slice(&[0; 16 + 24 + 16]);
        assert!(matches!(Header::parse(&greedy), Err(BlobError::BadHeader(m)) if m.contains("memory")));
    }
}
