//! The credential vault: named secrets sealed in one `HXB1` blob (see [`blob`]) beside
//! the data, opened by a key from a key file, a passphrase or the OS keyring (see
//! [`key`]), and [`Credentials`], the one way a service reads a credential: the
//! environment first, then the vault.
//!
//! Every process that opens the same file sees the others' writes within a second:
//! reads compare the file's stamp at most once a second and reload when it changed.
//! Writes are a read-modify-write under an exclusive lock file, sealed to a temporary
//! file and renamed over the vault, so a crash leaves the old vault or the new one,
//! never half of either.

pub mod blob;
mod credentials;
mod key;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
pub use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use blob::{Argon2Params, BlobError};
pub use credentials::{Credentials, KNOWN, KnownCredential, Origin};
use key::KeyHolder;
pub use key::KeySource;

/// How often a read looks whether another process changed the file.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
const MAX_NAME_LEN: usize = 128;

/// `[vault]` of helix.toml; the `HELIX_VAULT_*` variables set the same fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// The sealed file; unset: `HELIX_HOME/vault.hxb`.
    pub path: Option<PathBuf>,
    /// A file holding the key material (>= 32 characters): a mounted Kubernetes Secret.
    pub key_file: Option<PathBuf>,
    /// Seals the vault with Argon2id of this passphrase instead of a key.
    pub passphrase: Option<SecretString>,
    /// Whether `GET /api/v1/secrets/{key}` may answer a value at all (docs/decisions/0010).
    pub allow_reveal: bool,
    /// Argon2id cost for a passphrase vault; unset: [`Argon2Params::default`]. Kept in
    /// each blob, so a change applies at the next write.
    #[serde(skip)]
    pub argon2: Option<Argon2Params>,
}

/// Why the vault cannot be read or written. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{}: {source}", path.display())]
    Sealed { path: PathBuf, source: BlobError },
    #[error("{} is sealed with a passphrase: set HELIX_VAULT_PASSPHRASE (or vault.passphrase)", path.display())]
    NeedsPassphrase { path: PathBuf },
    #[error(
        "{} is sealed with a key, not a passphrase: unset HELIX_VAULT_PASSPHRASE, and keep its key in {} or \
         name it with HELIX_VAULT_KEY_FILE",
        path.display(),
        expected.display()
    )]
    NeedsKey { path: PathBuf, expected: PathBuf },
    #[error(
        "{} exists but its key is missing: expected the {expected} (or set HELIX_VAULT_KEY_FILE / \
         HELIX_VAULT_PASSPHRASE)",
        path.display()
    )]
    KeyMissing { path: PathBuf, expected: String },
    #[error("the vault's key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error("{}: the sealed content is not a vault's: {reason}", path.display())]
    Payload { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("OS keyring: {0}")]
    Keyring(String),
    #[error(
        "invalid secret name {0:?}: a letter or '_' first, then letters, digits, '_', '.' or '-', at most \
         {MAX_NAME_LEN} characters"
    )]
    InvalidName(String),
    #[error("a secret's value cannot be empty")]
    EmptyValue,
}

impl VaultError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_owned(), source }
    }
}

/// A secret's name and when it last changed; never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VaultEntry {
    pub name: String,
    pub changed_at: DateTime<Utc>,
}

#[derive(Clone)]
struct Entry {
    value: SecretString,
    changed_at: DateTime<Utc>,
}

/// The file as this process last read it.
#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    /// Length, modification time and (on Unix) inode of the file loaded; `None`: no file.
    stamp: Option<Stamp>,
    /// The key the loaded blob was sealed with, kept so writes and reloads need no new
    /// key derivation until a rotation changes the salt.
    key: Option<blob::SealingKey>,
}

type Stamp = (u64, Option<SystemTime>, u64);

/// An open vault. `Send + Sync`; share it as `Arc<Vault>`.
pub struct Vault {
    path: PathBuf,
    keys: KeyHolder,
    state: RwLock<State>,
    checked: Mutex<Instant>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("path", &self.path).field("key_source", &self.keys.source).finish()
    }
}

impl Vault {
    /// The vault of this configuration. A missing file is an empty vault, created by the
    /// first write; a file that exists but cannot be opened is an error that says why.
    pub fn open(home: &Path, config: &VaultConfig) -> Result<Self, VaultError> {
        let path = config.path.clone().unwrap_or_else(|| home.join("vault.hxb"));
        let keys = KeyHolder::resolve(&path, config);
        let vault = Self { path, keys, state: RwLock::default(), checked: Mutex::new(Instant::now()) };
        let loaded = vault.load(None)?;
        *vault.state.write().expect("vault state lock") = loaded;
        Ok(vault)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key_source(&self) -> &KeySource {
        &self.keys.source
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Writes an empty vault if there is none yet; `false` if one existed.
    pub fn init(&self) -> Result<bool, VaultError> {
        let existed = self.stamp()?.is_some();
        self.change(|_| Ok(()))?;
        Ok(!existed)
    }

    /// The value of `name`, if the vault holds it.
    pub fn get(&self, name: &str) -> Option<SecretString> {
        self.refresh();
        self.state.read().expect("vault state lock").entries.get(name).map(|e| e.value.clone())
    }

    /// Every secret's name and change time, sorted by name.
    pub fn entries(&self) -> Vec<VaultEntry> {
        self.refresh();
        let state = self.state.read().expect("vault state lock");
        state.entries.iter().map(|(name, e)| VaultEntry { name: name.clone(), changed_at: e.changed_at }).collect()
    }

    pub fn changed_at(&self, name: &str) -> Option<DateTime<Utc>> {
        self.refresh();
        self.state.read().expect("vault state lock").entries.get(name).map(|e| e.changed_at)
    }

    /// Stores `value` under `name`, replacing what was there.
    pub fn set(&self, name: &str, value: SecretString) -> Result<(), VaultError> {
        if !valid_name(name) {
            return Err(VaultError::InvalidName(name.to_owned()));
        }
        if value.expose_secret().is_empty() {
            return Err(VaultError::EmptyValue);
        }
        self.change(|entries| {
            entries.insert(name.to_owned(), Entry { value, changed_at: Utc::now() });
            Ok(())
        })
        .map(|_| ())
    }

    /// Removes `name`; `false` if it was not there.
    pub fn remove(&self, name: &str) -> Result<bool, VaultError> {
        let mut removed = false;
        self.change(|entries| {
            removed = entries.remove(name).is_some();
            Ok(())
        })?;
        Ok(removed)
    }

    /// Re-seals every secret under a new key: fresh key material where Helix manages
    /// it (a generated key file, the keyring), a fresh salt always. The new key is
    /// staged first, the new blob renamed into place, then the staged key committed:
    /// a crash at any point leaves a vault that opens (with the old key, or with the
    /// staged one, which the next open commits).
    pub fn rotate(&self) -> Result<(), VaultError> {
        let _lock = self.lock()?;
        let mut state = self.state.write().expect("vault state lock");
        *state = self.load(state.key.clone())?;
        let staged = self.keys.stage_new()?;
        let secret = match &staged {
            Some(key) => key.clone(),
            None => self.keys.create()?,
        };
        let result = blob::SealingKey::fresh(self.keys.kdf(), &secret)
            .map_err(|source| VaultError::Sealed { path: self.path.clone(), source })
            .and_then(|key| {
                self.write(&state.entries, &key)?;
                Ok(key)
            });
        match result {
            Ok(key) => {
                if staged.is_some() {
                    self.keys.commit_staged()?;
                }
                state.key = Some(key);
                state.stamp = self.stamp()?;
                Ok(())
            }
            Err(error) => {
                self.keys.discard_staged();
                Err(error)
            }
        }
    }

    /// Reads the file under the current key (or a staged one a rotation left behind).
    fn load(&self, held: Option<blob::SealingKey>) -> Result<State, VaultError> {
        let stamp = self.stamp()?;
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(VaultError::io(&self.path, e)),
        };
        let sealed = |source| VaultError::Sealed { path: self.path.clone(), source };
        let header = blob::Header::parse(&bytes).map_err(sealed)?;
        let (key, plaintext) = match held.filter(|k| k.fits(&header)) {
            Some(key) => {
                let plaintext = key.open(&header).map_err(sealed)?;
                (key, plaintext)
            }
            None => self.open_with_sources(&header)?,
        };
        let entries = decode(&plaintext).map_err(|reason| VaultError::Payload { path: self.path.clone(), reason })?;
        Ok(State { entries, stamp, key: Some(key) })
    }

    fn open_with_sources(
        &self,
        header: &blob::Header<'_>,
    ) -> Result<(blob::SealingKey, Zeroizing<Vec<u8>>), VaultError> {
        let sealed = |source| VaultError::Sealed { path: self.path.clone(), source };
        let current = self.keys.secret(header.kdf)?;
        let mut failure = None;
        if let Some(secret) = &current {
            let key = blob::SealingKey::derive(header.kdf, header.salt, secret).map_err(sealed)?;
            match key.open(header) {
                Ok(plaintext) => return Ok((key, plaintext)),
                Err(e) => failure = Some(e),
            }
        }
        // a rotation that renamed its blob but did not commit its key
        if let Some(staged) = self.keys.staged()? {
            let key = blob::SealingKey::derive(header.kdf, header.salt, &staged).map_err(sealed)?;
            if let Ok(plaintext) = key.open(header) {
                tracing::info!(vault = %self.path.display(), "completing an interrupted key rotation");
                self.keys.commit_staged()?;
                return Ok((key, plaintext));
            }
        }
        match failure {
            Some(e) => Err(sealed(e)),
            None => Err(VaultError::KeyMissing { path: self.path.clone(), expected: self.keys.source.to_string() }),
        }
    }

    /// Applies `edit` to the newest content on disk and writes the result, under the
    /// lock.
    fn change(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, Entry>) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let _lock = self.lock()?;
        let mut state = self.state.write().expect("vault state lock");
        if state.stamp != self.stamp()? || state.stamp.is_none() {
            *state = self.load(state.key.clone())?;
        }
        let existed = state.stamp.is_some();
        let mut entries = state.entries.clone();
        edit(&mut entries)?;
        if existed && same(&entries, &state.entries) {
            return Ok(());
        }
        let key = match state.key.clone() {
            Some(key) => key,
            None => {
                let secret = self.keys.create()?;
                blob::SealingKey::fresh(self.keys.kdf(), &secret)
                    .map_err(|source| VaultError::Sealed { path: self.path.clone(), source })?
            }
        };
        self.write(&entries, &key)?;
        state.entries = entries;
        state.key = Some(key);
        state.stamp = self.stamp()?;
        Ok(())
    }

    fn write(&self, entries: &BTreeMap<String, Entry>, key: &blob::SealingKey) -> Result<(), VaultError> {
        write_atomically(&self.path, &key.seal(&encode(entries)))
    }

    /// Reloads when another process changed the file; at most one look a second.
    fn refresh(&self) {
        {
            let mut checked = self.checked.lock().expect("vault check lock");
            if checked.elapsed() < RELOAD_CHECK {
                return;
            }
            *checked = Instant::now();
        }
        let Ok(stamp) = self.stamp() else { return };
        let held = {
            let state = self.state.read().expect("vault state lock");
            if stamp == state.stamp {
                return;
            }
            state.key.clone()
        };
        match self.load(held) {
            Ok(loaded) => *self.state.write().expect("vault state lock") = loaded,
            // keep serving what was read; the next look tries again
            Err(error) => tracing::warn!(%error, "the vault changed on disk but cannot be reloaded"),
        }
    }

    fn stamp(&self) -> Result<Option<Stamp>, VaultError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(Some((meta.len(), meta.modified().ok(), inode(&meta)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VaultError::io(&self.path, e)),
        }
    }

    /// An exclusive lock on `<vault>.lock` for a read-modify-write across processes.
    fn lock(&self) -> Result<std::fs::File, VaultError> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        create_private_dir(&path)?;
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(|e| VaultError::io(&path, e))?;
        file.lock().map_err(|e| VaultError::io(&path, e))?;
        Ok(file)
    }
}

fn same(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ea), (nb, eb))| {
            na == nb && ea.changed_at == eb.changed_at && ea.value.expose_secret() == eb.value.expose_secret()
        })
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// Whether `name` may name a secret: a letter or `_`, then letters, digits, `_`, `.`,
/// `-`; at most 128 characters (environment-variable names fit).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= MAX_NAME_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The sealed payload: `{"entries": {NAME: {"value": .., "changed_at": ..}}}`.
#[derive(Serialize)]
struct PayloadOut<'a> {
    entries: BTreeMap<&'a str, EntryOut<'a>>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    value: &'a str,
    changed_at: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadIn {
    entries: BTreeMap<String, EntryIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryIn {
    value: SecretString,
    changed_at: DateTime<Utc>,
}

fn encode(entries: &BTreeMap<String, Entry>) -> Zeroizing<Vec<u8>> {
    let payload = PayloadOut {
        entries: entries
            .iter()
            .map(|(name, e)| (name.as_str(), EntryOut { value: e.value.expose_secret(), changed_at: e.changed_at }))
            .collect(),
    };
    let mut out = Zeroizing::new(Vec::new());
    serde_json::to_writer(&mut *out, &payload).expect("a map of strings serialises");
    out
}

fn decode(plaintext: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
    let payload: PayloadIn = serde_json::from_slice(plaintext).map_err(|e| e.to_string())?;
    Ok(payload
        .entries
        .into_iter()
        .map(|(name, e)| (name, Entry { value: e.value, changed_at: e.changed_at }))
        .collect())
}

/// Writes `bytes` to `path` through a 0600 temporary file in the same directory,
/// synced, renamed over `path`, and the directory synced.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let dir = create_private_dir(path)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| VaultError::io(dir, e))?;
    file.write_all(bytes).map_err(|e| VaultError::io(file.path(), e))?;
    file.as_file().sync_all().map_err(|e| VaultError::io(file.path(), e))?;
    file.persist(path).map_err(|e| VaultError::io(path, e.error))?;
    sync_dir(path)
}

/// The directory of `path`, created 0700 if missing.
fn create_private_dir(path: &Path) -> Result<&Path, VaultError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| VaultError::io(dir, e))?;
    }
    Ok(dir)
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), VaultError> {
    #[cfg(unix)]
    {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| VaultError::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests;
