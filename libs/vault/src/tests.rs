use std::path::Path;
use std::sync::Arc;

use super::*;

const CHEAP: Argon2Params = Argon2Params { memory_kib: 64, iterations: 1, lanes: 1 };
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn passphrase(text: &str) -> VaultConfig {
    VaultConfig { passphrase: Some(text.into()), argon2: Some(CHEAP), ..VaultConfig::default() }
}

fn key_file(path: &Path) -> VaultConfig {
    VaultConfig { key_file: Some(path.to_owned()), ..VaultConfig::default() }
}

fn value(vault: &Vault, name: &str) -> Option<String> {
    vault.get(name).map(|v| v.expose_secret().to_owned())
}

#[test]
fn round_trip_under_every_key_source() {
    let dir = tempfile::tempdir().unwrap();
    let material = dir.path().join("mounted-secret");
    std::fs::write(&material, "k8s-secret-material-0123456789abcdefghij\n").unwrap();
    let cases = [
        ("generated", VaultConfig::default()),
        ("passphrase", passphrase("correct horse battery staple")),
        ("key file", key_file(&material)),
    ];
    for (what, config) in cases {
        let home = dir.path().join(what);
        let vault = Vault::open(&home, &config).unwrap();
        assert!(!vault.exists(), "{what}: no file before the first write");
        assert_eq!(value(&vault, "OPENAI_API_KEY"), None);
        vault.set("OPENAI_API_KEY", "sk-test-123".into()).unwrap();
        vault.set("GITHUB_TOKEN", "ghp_abc".into()).unwrap();
        assert!(vault.remove("GITHUB_TOKEN").unwrap());
        assert!(!vault.remove("GITHUB_TOKEN").unwrap());

        let reopened = Vault::open(&home, &config).unwrap();
        assert_eq!(value(&reopened, "OPENAI_API_KEY").as_deref(), Some("sk-test-123"), "{what}");
        let names: Vec<_> = reopened.entries().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["OPENAI_API_KEY"], "{what}");
        let bytes = std::fs::read(reopened.path()).unwrap();
        assert!(bytes.starts_with(b"HXB1\x01"), "{what}");
        assert!(!bytes.windows(11).any(|w| w == b"sk-test-123"), "{what}: the value is sealed");
    }
}

#[cfg(unix)]
#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let vault = Vault::open(&home, &VaultConfig::default()).unwrap();
    assert!(vault.init().unwrap());
    assert!(!vault.init().unwrap(), "a second init finds the vault");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("vault.hxb")), 0o600);
    assert_eq!(mode(&home.join("vault.key")), 0o600);
    assert_eq!(mode(&home.join("vault.hxb.lock")), 0o600);
    assert_eq!(vault.key_source(), &KeySource::GeneratedFile(home.join("vault.key")));
}

/// What a user gets wrong, and the sentence that tells them.
#[test]
fn opening_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = |home: &Path, config: &VaultConfig| {
        let vault = Vault::open(home, config).unwrap();
        vault.set("A", "1".into()).unwrap();
    };
    let by_passphrase = dir.path().join("by-passphrase");
    sealed(&by_passphrase, &passphrase("right"));
    let by_key = dir.path().join("by-key");
    sealed(&by_key, &VaultConfig::default());
    let short = dir.path().join("short-key");
    std::fs::write(&short, "too short").unwrap();
    let altered = dir.path().join("altered");
    sealed(&altered, &VaultConfig::default());
    let file = altered.join("vault.hxb");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let truncated = dir.path().join("truncated");
    sealed(&truncated, &VaultConfig::default());
    let file = truncated.join("vault.hxb");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..20]).unwrap();
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("vault.hxb"), b"{\"not\": \"a vault\"}").unwrap();
    let keyless = dir.path().join("keyless");
    sealed(&keyless, &VaultConfig::default());
    std::fs::remove_file(keyless.join("vault.key")).unwrap();

    let cases: &[(&Path, VaultConfig, &str)] = &[
        (&by_passphrase, passphrase("wrong"), "the key is wrong or the file was altered"),
        (&by_passphrase, VaultConfig::default(), "sealed with a passphrase: set HELIX_VAULT_PASSPHRASE"),
        (&by_key, passphrase("any"), "sealed with a key, not a passphrase"),
        (&by_key, key_file(&dir.path().join("absent")), "absent: it does not exist"),
        (&by_key, key_file(&short), "it holds 9 characters, at least 32 are needed"),
        (&altered, VaultConfig::default(), "the key is wrong or the file was altered"),
        (&truncated, VaultConfig::default(), "truncated (20 bytes)"),
        (&foreign, VaultConfig::default(), "not a Helix vault"),
        (&keyless, VaultConfig::default(), "exists but its key is missing: expected the generated key file"),
    ];
    for (home, config, expected) in cases {
        let error = Vault::open(home, config).unwrap_err().to_string();
        assert!(error.contains(expected), "{}: {error:?} lacks {expected:?}", home.display());
        assert!(error.contains("vault.hxb") || error.contains("key file"), "names the file: {error}");
    }
}

#[test]
fn names_and_values_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), &VaultConfig::default()).unwrap();
    for good in ["OPENAI_API_KEY", "_x", "a.b-c_9", &"N".repeat(128)] {
        assert!(valid_name(good), "{good}");
    }
    for bad in ["", "9LIVES", "has space", "semi;colon", "ünï", "../etc", &"N".repeat(129)] {
        assert!(!valid_name(bad), "{bad}");
        assert!(matches!(vault.set(bad, "v".into()), Err(VaultError::InvalidName(_))), "{bad}");
    }
    assert!(matches!(vault.set("EMPTY", "".into()), Err(VaultError::EmptyValue)));
    assert!(!vault.exists(), "refused writes create nothing");
}

/// Two processes (two handles) writing the same vault keep each other's changes, and
/// a reader sees them within the reload interval.
#[test]
fn concurrent_writers_merge() {
    let dir = tempfile::tempdir().unwrap();
    let config = VaultConfig::default();
    let first = Vault::open(dir.path(), &config).unwrap();
    let second = Vault::open(dir.path(), &config).unwrap();
    first.set("A", "1".into()).unwrap();
    second.set("B", "2".into()).unwrap();
    first.set("C", "3".into()).unwrap();
    let names: Vec<_> = Vault::open(dir.path(), &config).unwrap().entries().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["A", "B", "C"]);
    std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
    assert_eq!(value(&second, "C").as_deref(), Some("3"), "the reader reloaded");
}

#[test]
fn rotation_keeps_every_secret_under_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    for (what, config) in [("generated", VaultConfig::default()), ("passphrase", passphrase("p"))] {
        let home = dir.path().join(what);
        let vault = Vault::open(&home, &config).unwrap();
        vault.set("A", "alpha".into()).unwrap();
        vault.set("B", "beta".into()).unwrap();
        let before = std::fs::read(vault.path()).unwrap();
        let key_before = std::fs::read(home.join("vault.key")).ok();
        vault.rotate().unwrap();
        let after = std::fs::read(vault.path()).unwrap();
        let salt = |blob: &[u8]| blob::Header::parse(blob).unwrap().salt;
        assert_ne!(salt(&before), salt(&after), "{what}: a fresh salt");
        if key_before.is_some() {
            assert_ne!(key_before, std::fs::read(home.join("vault.key")).ok(), "{what}: fresh key material");
        }
        let reopened = Vault::open(&home, &config).unwrap();
        assert_eq!(value(&reopened, "A").as_deref(), Some("alpha"), "{what}");
        assert_eq!(value(&reopened, "B").as_deref(), Some("beta"), "{what}");
        assert!(!home.join("vault.key.new").exists());
    }
}

/// A rotation stopped at each of its steps leaves a vault that opens with its secrets.
#[test]
fn an_interrupted_rotation_leaves_a_usable_vault() {
    let dir = tempfile::tempdir().unwrap();
    let config = VaultConfig::default();
    for stop_after in ["staged key", "renamed blob"] {
        let home = dir.path().join(stop_after.replace(' ', "-"));
        let vault = Vault::open(&home, &config).unwrap();
        vault.set("A", "alpha".into()).unwrap();
        let staged = vault.keys.stage_new().unwrap().unwrap();
        if stop_after == "renamed blob" {
            let key = blob::SealingKey::fresh(blob::Kdf::Hkdf, &staged).unwrap();
            let entries = vault.state.read().unwrap().entries.clone();
            vault.write(&entries, &key).unwrap();
        }
        drop(vault);
        let reopened = Vault::open(&home, &config).unwrap();
        assert_eq!(value(&reopened, "A").as_deref(), Some("alpha"), "stopped after the {stop_after}");
        reopened.set("B", "beta".into()).unwrap();
        reopened.rotate().unwrap();
        let again = Vault::open(&home, &config).unwrap();
        assert_eq!(value(&again, "B").as_deref(), Some("beta"), "stopped after the {stop_after}");
        assert!(!home.join("vault.key.new").exists(), "stopped after the {stop_after}");
    }
}

/// Blobs this version wrote open in every later one: the committed fixtures must keep
/// opening. `cargo test -p helix-vault -- --ignored write_fixtures` wrote them.
#[test]
fn committed_fixtures_open() {
    let fixtures = Path::new(FIXTURES);
    let by_passphrase = VaultConfig {
        path: Some(fixtures.join("v1-passphrase.hxb")),
        passphrase: Some("helix fixture passphrase".into()),
        ..VaultConfig::default()
    };
    let by_key = VaultConfig {
        path: Some(fixtures.join("v1-key-file.hxb")),
        key_file: Some(fixtures.join("v1-key-file.key")),
        ..VaultConfig::default()
    };
    for config in [by_passphrase, by_key] {
        let vault = Vault::open(fixtures, &config).unwrap();
        assert_eq!(value(&vault, "OPENAI_API_KEY").as_deref(), Some("sk-fixture-0123456789"));
        assert_eq!(value(&vault, "GITHUB_TOKEN").as_deref(), Some("ghp_fixture_ä€😀"));
        let changed = vault.changed_at("OPENAI_API_KEY").unwrap();
        assert_eq!(changed.to_rfc3339(), "2026-12-07T12:00:00+00:00");
    }
}

#[test]
#[ignore = "writes the committed fixtures; run once per format version"]
fn write_fixtures() {
    let fixtures = Path::new(FIXTURES);
    let at = "2026-12-07T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let entries: BTreeMap<String, Entry> =
        [("OPENAI_API_KEY", "sk-fixture-0123456789"), ("GITHUB_TOKEN", "ghp_fixture_ä€😀")]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Entry { value: value.into(), changed_at: at }))
            .collect();
    let key_file = fixtures.join("v1-key-file.key");
    std::fs::write(&key_file, "fixture key material, not a secret: 0123456789\n").unwrap();
    let cheap = blob::Kdf::Argon2id(CHEAP);
    for (file, kdf, secret) in [
        ("v1-passphrase.hxb", cheap, b"helix fixture passphrase".to_vec()),
        ("v1-key-file.hxb", blob::Kdf::Hkdf, std::fs::read(&key_file).unwrap().trim_ascii().to_vec()),
    ] {
        let key = blob::SealingKey::fresh(kdf, &secret).unwrap();
        std::fs::write(fixtures.join(file), key.seal(&encode(&entries))).unwrap();
    }
}

#[test]
fn secrets_never_print() {
    let config = passphrase("hunter2-passphrase");
    assert!(!format!("{config:?}").contains("hunter2"));
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::open(dir.path(), &VaultConfig::default()).unwrap());
    vault.set("TOKEN", "hunter2-token".into()).unwrap();
    let credentials = Credentials::new(Some(vault.clone()));
    for shown in [
        format!("{vault:?}"),
        format!("{credentials:?}"),
        format!("{:?}", vault.get("TOKEN")),
        format!("{:?}", vault.entries()),
    ] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[test]
fn the_environment_comes_first() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::open(dir.path(), &VaultConfig::default()).unwrap());
    vault.set("BOTH", "from-vault".into()).unwrap();
    vault.set("VAULT_ONLY", "from-vault".into()).unwrap();
    vault.set("BLANK_IN_ENV", "from-vault".into()).unwrap();
    let env = |name: &str| match name {
        "BOTH" | "ENV_ONLY" => Some("from-env".to_owned()),
        "BLANK_IN_ENV" => Some("  ".to_owned()),
        _ => None,
    };
    let credentials = Credentials::with_env(Some(vault), env);
    let cases = [
        ("BOTH", Some("from-env"), Origin::Environment),
        ("ENV_ONLY", Some("from-env"), Origin::Environment),
        ("VAULT_ONLY", Some("from-vault"), Origin::Vault),
        ("BLANK_IN_ENV", Some("from-vault"), Origin::Vault),
        ("NEITHER", None, Origin::Unset),
    ];
    for (name, expected, origin) in cases {
        assert_eq!(credentials.get(name).as_ref().map(|v| v.expose_secret()), expected, "{name}");
        assert_eq!(credentials.origin(name), origin, "{name}");
    }
    assert_eq!(Credentials::none().origin("BOTH"), Origin::Unset);
}
