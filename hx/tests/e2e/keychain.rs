//! `hx keychain` through the binary, as a user types it: a table of commands run in
//! order against one HELIX_HOME, each with its input, passphrase and expected outcome.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const HX: &str = env!("CARGO_BIN_EXE_hx");
const PASSPHRASE: &str = "correct horse battery staple";

/// One command: what it is given and what it must do.
struct Case {
    args: &'static [&'static str],
    /// piped to standard input
    stdin: Option<&'static str>,
    /// HELIX_VAULT_PASSPHRASE
    passphrase: Option<&'static str>,
    /// done to HELIX_HOME before the command
    before: Option<fn(&Path)>,
    ok: bool,
    /// standard output, exactly
    prints: Option<&'static str>,
    says: &'static [&'static str],
    never_says: &'static [&'static str],
}

const CASE: Case =
    Case { args: &[], stdin: None, passphrase: None, before: None, ok: true, prints: None, says: &[], never_says: &[] };

/// Flips one byte in the middle of the sealed file.
fn flip_a_byte(home: &Path) {
    let path = home.join("vault.hxb");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keychain_with_a_passphrase() -> anyhow::Result<()> {
    let p = Some(PASSPHRASE);
    let values = &["sk-first-one", "gh-from-stdin"];
    check(&[
        Case { args: &["keychain", "list"], passphrase: p, says: &["no vault yet"], ..CASE },
        Case {
            args: &["keychain", "init"],
            passphrase: p,
            says: &["vault created", "sealed by passphrase (HELIX_VAULT_PASSPHRASE)"],
            ..CASE
        },
        Case { args: &["keychain", "set", "OPENAI_API_KEY", "sk-first-one"], passphrase: p, says: &["stored"], ..CASE },
        // standard input: a pipe's trailing newline is not part of the value
        Case {
            args: &["keychain", "set", "GITHUB_TOKEN"],
            stdin: Some("gh-from-stdin\n"),
            passphrase: p,
            says: &["stored GITHUB_TOKEN"],
            never_says: values,
            ..CASE
        },
        Case { args: &["keychain", "get", "GITHUB_TOKEN"], passphrase: p, prints: Some("gh-from-stdin\n"), ..CASE },
        Case {
            args: &["keychain", "list"],
            passphrase: p,
            says: &["GITHUB_TOKEN  ", "OPENAI_API_KEY", "changed 20", "passphrase"],
            never_says: values,
            ..CASE
        },
        Case {
            args: &["keychain", "set", "OPENAI_API_KEY"],
            stdin: Some("sk-second\n"),
            passphrase: p,
            says: &["replaced OPENAI_API_KEY"],
            ..CASE
        },
        // errors: exit 1 and one sentence, never a value
        Case {
            args: &["keychain", "get", "OPENAI_API_KEY"],
            passphrase: Some("wrong horse"),
            ok: false,
            says: &["key is wrong"],
            never_says: &["sk-second"],
            ..CASE
        },
        Case {
            args: &["keychain", "list"],
            ok: false,
            says: &["sealed with a passphrase: set HELIX_VAULT_PASSPHRASE"],
            ..CASE
        },
        Case {
            args: &["keychain", "set", "9 lives", "x"],
            passphrase: p,
            ok: false,
            says: &["invalid secret name \"9 lives\""],
            ..CASE
        },
        Case { args: &["keychain", "get", "a/b"], passphrase: p, ok: false, says: &["invalid secret name"], ..CASE },
        Case {
            args: &["keychain", "set", "EMPTY"],
            stdin: Some("\n"),
            passphrase: p,
            ok: false,
            says: &["cannot be empty"],
            ..CASE
        },
        Case { args: &["keychain", "get", "NOT_THERE"], passphrase: p, ok: false, says: &["not in the vault"], ..CASE },
        // rotate keeps every value
        Case { args: &["keychain", "rotate"], passphrase: p, says: &["re-sealed 2 secrets"], ..CASE },
        Case { args: &["keychain", "get", "OPENAI_API_KEY"], passphrase: p, prints: Some("sk-second\n"), ..CASE },
        Case { args: &["keychain", "rm", "OPENAI_API_KEY"], passphrase: p, says: &["removed OPENAI_API_KEY"], ..CASE },
        Case {
            args: &["keychain", "rm", "OPENAI_API_KEY"],
            passphrase: p,
            ok: false,
            says: &["not in the vault"],
            ..CASE
        },
        Case { args: &["keychain", "get", "GITHUB_TOKEN"], passphrase: p, prints: Some("gh-from-stdin\n"), ..CASE },
        Case {
            args: &["keychain", "get", "GITHUB_TOKEN"],
            passphrase: p,
            before: Some(flip_a_byte),
            ok: false,
            says: &["vault.hxb"],
            never_says: values,
            ..CASE
        },
    ])
    .await
}

/// Without a passphrase (and no OS keyring on Linux) the vault's key is generated
/// beside it, and `init` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keychain_with_a_generated_key() -> anyhow::Result<()> {
    check(&[
        Case { args: &["keychain", "init"], says: &["vault created", "sealed by generated key file"], ..CASE },
        Case { args: &["keychain", "init"], says: &["already there"], ..CASE },
        Case { args: &["keychain", "set", "SLACK_BOT_TOKEN"], stdin: Some("xoxb-1\r\n"), ..CASE },
        Case { args: &["keychain", "get", "SLACK_BOT_TOKEN"], prints: Some("xoxb-1\n"), ..CASE },
        Case { args: &["keychain", "rotate"], says: &["re-sealed 1 secrets"], ..CASE },
        Case { args: &["keychain", "get", "SLACK_BOT_TOKEN"], prints: Some("xoxb-1\n"), ..CASE },
        Case {
            args: &["keychain", "list"],
            before: Some(|home| {
                let path = home.join("vault.hxb");
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(path, &bytes[..20]).unwrap()
            }),
            ok: false,
            says: &["truncated"],
            ..CASE
        },
    ])
    .await
}

/// Runs the cases in order against one fresh HELIX_HOME.
async fn check(cases: &[Case]) -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    for case in cases {
        if let Some(before) = case.before {
            before(home.path());
        }
        let mut command = Command::new(HX);
        command
            .args(case.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("HELIX_HOME", home.path())
            .stdin(if case.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(passphrase) = case.passphrase {
            command.env("HELIX_VAULT_PASSPHRASE", passphrase);
        }
        let mut child = command.spawn()?;
        if let Some(input) = case.stdin {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).await?;
        }
        let output = child.wait_with_output().await?;
        let (stdout, stderr) = (String::from_utf8(output.stdout)?, String::from_utf8(output.stderr)?);
        let all = format!("{stdout}{stderr}");
        let what = format!("hx {}: {all}", case.args.join(" "));
        if case.ok {
            assert!(output.status.success(), "{what}");
        } else {
            assert_eq!(output.status.code(), Some(1), "{what}");
            assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "one sentence: {what}");
        }
        if let Some(expected) = case.prints {
            assert_eq!(stdout, expected, "{what}");
        }
        for text in case.says {
            assert!(all.contains(text), "{text:?} missing: {what}");
        }
        for text in case.never_says {
            assert!(!all.contains(text), "{text:?} printed: {what}");
        }
    }
    Ok(())
}
