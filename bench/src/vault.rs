//! The credential vault (bench/results/vault.json):
//! - opening a passphrase vault with the default Argon2id parameters, against opening
//!   the same secrets sealed under a key file (HKDF: no stretching), same run;
//! - reading a secret from the open vault, against a lookup in a plain map of strings.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use helix_vault::{ExposeSecret, Vault, VaultConfig};
use serde_json::{Value, json};

use crate::{machine, percentiles, write_report};

const SECRETS: usize = 50;
const OPENS: usize = 5;
const READS: usize = 200_000;

pub async fn run(out: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("mounted.key");
    std::fs::write(&key_file, "bench key material of more than thirty-two characters")?;
    let by_passphrase = VaultConfig {
        path: Some(dir.path().join("passphrase.hxb")),
        passphrase: Some("a passphrase a person would type".into()),
        ..VaultConfig::default()
    };
    let by_key =
        VaultConfig { path: Some(dir.path().join("key.hxb")), key_file: Some(key_file), ..VaultConfig::default() };
    for config in [&by_passphrase, &by_key] {
        let vault = Vault::open(dir.path(), config)?;
        for i in 0..SECRETS {
            vault.set(&format!("SECRET_{i}"), format!("value-{i}-{}", "x".repeat(40)).into())?;
        }
    }
    let open_passphrase = opens(dir.path(), &by_passphrase)?;
    let open_key = opens(dir.path(), &by_key)?;
    let reads = reads(&Vault::open(dir.path(), &by_passphrase)?);
    let goals = json!({
        "open_argon2id_default_under_1s": open_passphrase["p50_ms"].as_f64() < Some(1000.0),
        "read_secret_p99_under_10us": reads["vault"]["p99_us"].as_f64() < Some(10.0),
    });
    let report = json!({
        "benchmark": "vault: opening (Argon2id default parameters) and reading a secret",
        "measured_at": chrono::Utc::now().to_rfc3339(),
        "machine": machine(),
        // argon2 and blake2 are optimised in debug builds too (Cargo.toml), so the open
        // figure holds for both; reads are slower unoptimised
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "argon2id": {
            "memory_kib": helix_vault::Argon2Params::default().memory_kib,
            "iterations": helix_vault::Argon2Params::default().iterations,
            "lanes": helix_vault::Argon2Params::default().lanes,
        },
        "secrets": SECRETS,
        "open_passphrase": open_passphrase,
        "open_key_file_baseline": open_key,
        "read": reads,
        "goals": goals,
    });
    write_report(out, &report)
}

fn opens(home: &std::path::Path, config: &VaultConfig) -> anyhow::Result<Value> {
    let mut times = Vec::with_capacity(OPENS);
    for _ in 0..OPENS {
        let started = Instant::now();
        let vault = Vault::open(home, config)?;
        anyhow::ensure!(vault.get("SECRET_0").is_some(), "the vault opened empty");
        times.push(started.elapsed());
    }
    Ok(percentiles(&mut times))
}

/// Each read timed alone (the latency a caller sees, reload checks included), and
/// the same names looked up in a `BTreeMap<String, String>` as the floor.
fn reads(vault: &Vault) -> Value {
    let names: Vec<String> = (0..SECRETS).map(|i| format!("SECRET_{i}")).collect();
    let plain: BTreeMap<String, String> =
        names.iter().map(|n| (n.clone(), vault.get(n).unwrap().expose_secret().to_owned())).collect();
    let time = |read: &dyn Fn(&str) -> usize| {
        let mut times = Vec::with_capacity(READS);
        for i in 0..READS {
            let started = Instant::now();
            black_box(read(&names[i % SECRETS]));
            times.push(started.elapsed());
        }
        micros(percentiles(&mut times))
    };
    let vault_reads = time(&|name| vault.get(name).map_or(0, |v| v.expose_secret().len()));
    let map_reads = time(&|name| plain.get(name).cloned().map_or(0, |v| v.len()));
    json!({ "vault": vault_reads, "btreemap_clone_baseline": map_reads })
}

/// `percentiles` answers milliseconds; these are microseconds.
fn micros(ms: Value) -> Value {
    let us = |key: &str| ms[key].as_f64().map(|v| v * 1e3);
    json!({"count": ms["count"], "p50_us": us("p50_ms"), "p99_us": us("p99_ms"), "mean_us": us("mean_ms"), "max_us": us("max_ms")})
}
