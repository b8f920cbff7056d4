//! Where the vault's key comes from, in the order a process looks: a key file named by
//! the configuration (a mounted Kubernetes Secret), a passphrase, the OS keyring where a
//! persistent one exists (macOS, Windows), else a key generated beside the vault.
//!
//! Key material (a key file, the keyring's entry) is text of at least 32 characters,
//! stretched with HKDF; a passphrase goes through Argon2id. A generated key is 32
//! random bytes, base64: it never leaves the machine, but it is a separate file from the
//! vault, so a copied vault, backup or database dump alone opens nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::blob::{Argon2Params, Kdf};
use crate::{VaultConfig, VaultError, write_atomically};

/// The shortest key material accepted from a file or the keyring.
const MIN_KEY_CHARS: usize = 32;

/// Which source opens the vault. Displays where, never what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `vault.key_file` / `HELIX_VAULT_KEY_FILE`: a file someone else manages.
    KeyFile(PathBuf),
    /// `vault.passphrase` / `HELIX_VAULT_PASSPHRASE`.
    Passphrase,
    /// The OS keyring (macOS Keychain, Windows Credential Manager).
    Keyring,
    /// A key Helix generated beside the vault (0600).
    GeneratedFile(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyFile(path) => write!(f, "key file {}", path.display()),
            Self::Passphrase => f.write_str("passphrase (HELIX_VAULT_PASSPHRASE)"),
            Self::Keyring => f.write_str("OS keyring"),
            Self::GeneratedFile(path) => write!(f, "generated key file {}", path.display()),
        }
    }
}

/// A key source resolved for one vault path, able to read (and for the sources Helix
/// manages, write) its secret.
pub(crate) struct KeyHolder {
    pub source: KeySource,
    passphrase: Option<SecretString>,
    argon2: Argon2Params,
    vault_path: PathBuf,
}

impl KeyHolder {
    pub fn resolve(vault_path: &Path, config: &VaultConfig) -> Self {
        let passphrase = config.passphrase.clone().filter(|p| !p.expose_secret().is_empty());
        let source = if let Some(path) = &config.key_file {
            KeySource::KeyFile(path.clone())
        } else if passphrase.is_some() {
            KeySource::Passphrase
        } else if keyring::available() {
            KeySource::Keyring
        } else {
            KeySource::GeneratedFile(generated_key_path(vault_path))
        };
        Self { source, passphrase, argon2: config.argon2.unwrap_or_default(), vault_path: vault_path.to_owned() }
    }

    /// The KDF a new blob is sealed with.
    pub fn kdf(&self) -> Kdf {
        match self.source {
            KeySource::Passphrase => Kdf::Argon2id(self.argon2),
            _ => Kdf::Hkdf,
        }
    }

    /// The secret that opens a blob sealed with `kdf`; `None` when this source has none
    /// yet (a key Helix generates on the first write).
    pub fn secret(&self, kdf: Kdf) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        let path = &self.vault_path;
        match (kdf, &self.source) {
            (Kdf::Argon2id(_), KeySource::Passphrase) => {
                let passphrase = self.passphrase.as_ref().expect("a passphrase source has a passphrase");
                Ok(Some(Zeroizing::new(passphrase.expose_secret().as_bytes().to_vec())))
            }
            (Kdf::Argon2id(_), _) => Err(VaultError::NeedsPassphrase { path: path.clone() }),
            (Kdf::Hkdf, KeySource::Passphrase) => {
                Err(VaultError::NeedsKey { path: path.clone(), expected: generated_key_path(path) })
            }
            (Kdf::Hkdf, KeySource::KeyFile(file)) => match read_key_text(file)? {
                Some(text) => Ok(Some(text)),
                None => Err(VaultError::KeyFile { path: file.clone(), reason: "it does not exist".into() }),
            },
            (Kdf::Hkdf, KeySource::GeneratedFile(file)) => read_key_text(file),
            (Kdf::Hkdf, KeySource::Keyring) => keyring::read(path, false),
        }
    }

    /// The key material a rotation moves to, written where it survives a crash before
    /// the new blob is in place; `None` for sources Helix does not manage (a passphrase,
    /// a key file), whose rotation changes the salt only.
    pub fn stage_new(&self) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        match &self.source {
            KeySource::GeneratedFile(file) => {
                let key = random_key();
                write_atomically(&pending(file), &key)?;
                Ok(Some(key))
            }
            KeySource::Keyring => {
                let key = random_key();
                keyring::write(&self.vault_path, true, &key)?;
                Ok(Some(key))
            }
            KeySource::KeyFile(_) | KeySource::Passphrase => Ok(None),
        }
    }

    /// The staged key of a rotation that did not finish, if any.
    pub fn staged(&self) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        match &self.source {
            KeySource::GeneratedFile(file) => read_key_text(&pending(file)),
            KeySource::Keyring => keyring::read(&self.vault_path, true),
            KeySource::KeyFile(_) | KeySource::Passphrase => Ok(None),
        }
    }

    /// Makes the staged key the current one, once the blob sealed with it is in place.
    pub fn commit_staged(&self) -> Result<(), VaultError> {
        match &self.source {
            KeySource::GeneratedFile(file) => {
                std::fs::rename(pending(file), file).map_err(|e| VaultError::io(file, e))?;
                crate::sync_dir(file)
            }
            KeySource::Keyring => {
                let key = keyring::read(&self.vault_path, true)?.expect("a staged keyring entry");
                keyring::write(&self.vault_path, false, &key)?;
                keyring::delete(&self.vault_path, true)
            }
            KeySource::KeyFile(_) | KeySource::Passphrase => Ok(()),
        }
    }

    /// Drops a staged key that never sealed anything.
    pub fn discard_staged(&self) {
        match &self.source {
            KeySource::GeneratedFile(file) => {
                let _ = std::fs::remove_file(pending(file));
            }
            KeySource::Keyring => {
                let _ = keyring::delete(&self.vault_path, true);
            }
            KeySource::KeyFile(_) | KeySource::Passphrase => {}
        }
    }

    /// A first key for a source Helix manages; the vault's first write.
    pub fn create(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        match &self.source {
            KeySource::GeneratedFile(file) => {
                let key = random_key();
                write_atomically(file, &key)?;
                Ok(key)
            }
            KeySource::Keyring => {
                let key = random_key();
                keyring::write(&self.vault_path, false, &key)?;
                Ok(key)
            }
            KeySource::Passphrase => self.secret(self.kdf()).map(|s| s.expect("a passphrase")),
            KeySource::KeyFile(_) => self.secret(Kdf::Hkdf).map(|s| s.expect("an existing key file")),
        }
    }
}

pub(crate) fn generated_key_path(vault_path: &Path) -> PathBuf {
    vault_path.with_extension("key")
}

fn pending(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

fn random_key() -> Zeroizing<Vec<u8>> {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rng().fill(raw.as_mut());
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(raw.as_ref()).into_bytes())
}

/// The trimmed text of a key file; `None` if there is no such file.
fn read_key_text(file: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
    let raw = match std::fs::read(file) {
        Ok(raw) => Zeroizing::new(raw),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(VaultError::io(file, e)),
    };
    let text = raw.trim_ascii();
    if text.len() < MIN_KEY_CHARS {
        return Err(VaultError::KeyFile {
            path: file.to_owned(),
            reason: format!("it holds {} characters, at least {MIN_KEY_CHARS} are needed", text.len()),
        });
    }
    Ok(Some(Zeroizing::new(text.to_vec())))
}

#[cfg(any(target_os = "macos", target_os = "windows"))]
mod keyring {
    //! One keyring entry per vault: service `helix-vault`, user the vault's path.
    use std::path::Path;

    use zeroize::Zeroizing;

    use crate::VaultError;

    const SERVICE: &str = "helix-vault";

    fn entry(vault: &Path, staged: bool) -> Result<keyring::Entry, VaultError> {
        let user = format!("{}{}", vault.display(), if staged { ".new" } else { "" });
        keyring::Entry::new(SERVICE, &user).map_err(|e| VaultError::Keyring(e.to_string()))
    }

    pub fn available() -> bool {
        std::env::var_os("HELIX_VAULT_NO_KEYRING").is_none()
    }

    pub fn read(vault: &Path, staged: bool) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        match entry(vault, staged)?.get_password() {
            Ok(text) => Ok(Some(Zeroizing::new(text.into_bytes()))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(VaultError::Keyring(e.to_string())),
        }
    }

    pub fn write(vault: &Path, staged: bool, key: &[u8]) -> Result<(), VaultError> {
        let text = std::str::from_utf8(key).expect("generated keys are base64");
        entry(vault, staged)?.set_password(text).map_err(|e| VaultError::Keyring(e.to_string()))
    }

    pub fn delete(vault: &Path, staged: bool) -> Result<(), VaultError> {
        match entry(vault, staged)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(VaultError::Keyring(e.to_string())),
        }
    }
}

#[cfg(not(any(target_os = "macos", target_os = "windows")))]
mod keyring {
    //! No persistent OS keyring here (docs/decisions/0009): never chosen.
    use std::path::Path;

    use zeroize::Zeroizing;

    use crate::VaultError;

    pub fn available() -> bool {
        false
    }

    pub fn read(_: &Path, _: bool) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        unreachable!("the keyring source is never chosen without a keyring")
    }

    pub fn write(_: &Path, _: bool, _: &[u8]) -> Result<(), VaultError> {
        unreachable!("the keyring source is never chosen without a keyring")
    }

    pub fn delete(_: &Path, _: bool) -> Result<(), VaultError> {
        unreachable!("the keyring source is never chosen without a keyring")
    }
}
