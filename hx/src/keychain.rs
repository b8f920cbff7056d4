//! `hx keychain`: the credentials of this machine's vault (`helix_vault`), the one
//! `HELIX_HOME/helix.toml` and the `HELIX_VAULT_*` variables name. Values are printed
//! only by `get` (the vault's owner reading their own file); `list` shows names, when
//! each changed and which key seals the vault.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use helix_runtime::HelixConfig;
use helix_vault::{ExposeSecret, SecretString, Vault, VaultError};

#[derive(Debug, Args)]
pub struct KeychainArgs {
    #[command(subcommand)]
    pub command: KeychainCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeychainCommand {
    /// Create the vault now; says where it is and which key seals it
    Init,
    /// Store a secret. Without VALUE it is read from standard input (typed without echo
    /// on a terminal; a piped value loses its trailing newline), which keeps it out of
    /// the shell's history
    Set { name: String, value: Option<String> },
    /// Print a secret's value
    Get { name: String },
    /// The secrets' names and when each changed, and the vault's key source (no values)
    #[command(alias = "ls")]
    List,
    /// Remove a secret
    #[command(alias = "remove")]
    Rm { name: String },
    /// Re-seal every secret under a new key; an interrupted rotate leaves the old vault usable
    Rotate,
}

pub async fn run(args: KeychainArgs) -> anyhow::Result<ExitCode> {
    // file work and, for a passphrase, Argon2id: off the executor
    tokio::task::spawn_blocking(move || keychain(args.command)).await?
}

fn keychain(command: KeychainCommand) -> anyhow::Result<ExitCode> {
    if let KeychainCommand::Set { name, .. } | KeychainCommand::Get { name } | KeychainCommand::Rm { name } = &command
        && !helix_vault::valid_name(name)
    {
        return Err(flat(VaultError::InvalidName(name.clone())));
    }
    let config = HelixConfig::load()?;
    let vault = Vault::open(&config.home, &config.vault).map_err(flat)?;
    match command {
        KeychainCommand::Init => {
            let created = vault.init().map_err(flat)?;
            let verb = if created { "created" } else { "already there:" };
            println!("vault {verb} {}", vault.path().display());
            println!("sealed by {}", vault.key_source());
            if let helix_vault::KeySource::GeneratedFile(key) = vault.key_source() {
                println!("keep a copy of {} with your backups: the vault cannot be opened without it", key.display());
            }
        }
        KeychainCommand::Set { name, value } => {
            let value = match value {
                Some(value) => value,
                None => read_value(&name)?,
            };
            let replaced = vault.get(&name).is_some();
            vault.set(&name, SecretString::from(value)).map_err(flat)?;
            println!("{} {name} in {}", if replaced { "replaced" } else { "stored" }, vault.path().display());
            if std::env::var_os(&name).is_some() {
                println!("note: {name} is also set in the environment, which Helix reads first");
            }
        }
        KeychainCommand::Get { name } => match vault.get(&name) {
            Some(value) => println!("{}", value.expose_secret()),
            None => anyhow::bail!("{name} is not in the vault {}", vault.path().display()),
        },
        KeychainCommand::List => {
            if !vault.exists() {
                println!("no vault yet at {} (`hx keychain set` or `init` creates it)", vault.path().display());
                return Ok(ExitCode::SUCCESS);
            }
            println!("vault {} sealed by {}", vault.path().display(), vault.key_source());
            let entries = vault.entries();
            if entries.is_empty() {
                println!("no secrets");
            }
            let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
            for entry in entries {
                let shadowed = if std::env::var_os(&entry.name).is_some() { "  (the environment's wins)" } else { "" };
                println!(
                    "{:<width$}  changed {}{shadowed}",
                    entry.name,
                    entry.changed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
        }
        KeychainCommand::Rm { name } => {
            if !vault.remove(&name).map_err(flat)? {
                anyhow::bail!("{name} is not in the vault {}", vault.path().display());
            }
            println!("removed {name} from {}", vault.path().display());
        }
        KeychainCommand::Rotate => {
            if !vault.exists() {
                anyhow::bail!("no vault at {} yet: nothing to rotate", vault.path().display());
            }
            vault.rotate().map_err(flat)?;
            println!(
                "re-sealed {} secrets in {} with a new key (key source: {})",
                vault.entries().len(),
                vault.path().display(),
                vault.key_source()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The error's own sentence: a vault error names its cause in its message, and the
/// chain (`{:#}`) would repeat it.
fn flat(error: VaultError) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

/// A value from standard input: a prompt without echo on a terminal, else everything
/// piped in less one trailing newline.
fn read_value(name: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return Ok(dialoguer::Password::new().with_prompt(format!("value of {name}")).interact()?);
    }
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value).map_err(|e| anyhow::anyhow!("cannot read standard input: {e}"))?;
    let trimmed = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value);
    Ok(trimmed.to_owned())
}
