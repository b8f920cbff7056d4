//! Any bytes given to the vault's blob parser and opener: an error or a plaintext,
//! never a panic, an out-of-bounds read or a huge allocation.
#![no_main]

use helix_vault::blob::{Header, Kdf, SealingKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(header) = Header::parse(bytes) else { return };
    // HKDF always: Argon2's cost is bounded by the parser, but would only slow the search
    let key = SealingKey::derive(Kdf::Hkdf, header.salt, b"fuzzing key material, 32+ bytes long").unwrap();
    let _ = key.open(&header);
});
