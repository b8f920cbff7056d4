//! The served OpenAPI document is true: schemathesis (PyPI, pinned in
//! `fuzz/requirements.txt`; `make venv` installs it into `.venv`, or set
//! `HELIX_TEST_SCHEMATHESIS` to a schemathesis of its own) generates requests from the
//! document a whole Helix serves, valid and invalid, and checks every answer against it:
//! no 5xx, bodies match their schemas, every status and content type answered is
//! documented. A bounded run here; `make fuzz` runs [`long_fuzz`] with many more examples
//! and the stateful phase.
//!
//! Embedded only: the document and the handlers are the same code on both backends, and
//! what differs below them (SQL dialect, bus) is proven by every other module's tests on
//! both columns; a second start on PostgreSQL + NATS would double the time for no
//! answer the first does not give.

use std::path::{Path, PathBuf};

use helix_testkit::llm::{FakeLlm, Wire, quick_retries};
use helix_testkit::{Backend, TestEnv, TestHelix};
use hx::fleet::Role;

/// What schemathesis checks on every answer.
const CHECKS: &str = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance";

/// Fixed so a failure is reproduced by running again.
const SEED: &str = "15";

/// Operations left out: only those a generated request would break the run with. Both
/// take a key id, and the stateful phase feeds them the ids `GET /api/v1/keys` lists,
/// the admin key's ('admin') among them: revoked or rotated, the key the run sends would
/// make every later answer a 401. The auth matrix (`auth.rs`) covers both.
const EXCLUDED: &[&str] = &["DELETE /api/v1/keys/{id}", "POST /api/v1/keys/{id}/rotate"];

/// The llm-router's catalogue, each provider with the protocol it speaks.
const PROVIDERS: [(&str, Wire); 11] = [
    ("openai", Wire::OpenAi),
    ("anthropic", Wire::Anthropic),
    ("google", Wire::Gemini),
    ("xai", Wire::OpenAi),
    ("deepseek", Wire::OpenAi),
    ("mistral", Wire::OpenAi),
    ("together", Wire::OpenAi),
    ("openrouter", Wire::OpenAi),
    ("ollama", Wire::Ollama),
    ("cohere", Wire::Cohere),
    ("bedrock", Wire::Bedrock),
];

/// One run of schemathesis over the whole document.
struct Run {
    /// generated requests per operation and phase
    max_examples: u32,
    /// comma-separated: examples, coverage, fuzzing, stateful
    phases: &'static str,
}

/// `make test`: ~5,400 requests over every operation, under a minute alone on two cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_openapi_document_holds_under_schemathesis() -> anyhow::Result<()> {
    check(Run { max_examples: 10, phases: "examples,coverage,fuzzing" }).await
}

/// `make fuzz`: the long run, with stateful sequences (links between operations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by `make fuzz`"]
async fn long_fuzz() -> anyhow::Result<()> {
    let max_examples = std::env::var("HELIX_FUZZ_EXAMPLES").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    check(Run { max_examples, phases: "examples,coverage,fuzzing,stateful" }).await
}

/// Starts a whole Helix, runs schemathesis against its gateway and fails with
/// schemathesis' report when it found anything.
async fn check(run: Run) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schemathesis = std::env::var_os("HELIX_TEST_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../.venv/bin/schemathesis"));
    anyhow::ensure!(schemathesis.exists(), "{} is missing: run `make venv`", schemathesis.display());
    // every provider of the catalogue is a fake: a call to one without a key is a 503
    // (no provider could answer), true but a server error to schemathesis, and generated
    // bodies name providers (`/api/generate`'s `provider`)
    let mut env = TestEnv::new(Backend::Embedded).await?;
    quick_retries(&mut env.config);
    let mut fakes = Vec::new();
    for (name, wire) in PROVIDERS {
        let fake = FakeLlm::start().await?;
        fake.serve_as(&mut env.config, name, wire);
        fakes.push(fake);
    }
    let node = env.start(&Role::ALL).await?;
    let base_url = node.gateway_url().expect("gateway role runs");
    let helix = TestHelix { env, node: Some(node), base_url, http: reqwest::Client::new() };
    let workdir = helix.env.home().join("schemathesis");
    std::fs::create_dir_all(&workdir)?;
    let mut command = tokio::process::Command::new(&schemathesis);
    command
        .current_dir(&workdir)
        .arg("run")
        .arg(helix.url("/api/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {}", helix.env.admin_key)])
        .args(["--checks", CHECKS])
        .args(["--phases", run.phases])
        .args(["--max-examples", &run.max_examples.to_string()])
        .args(["--seed", SEED])
        // a database of past failures would replay them: every run starts clean
        .args(["--generation-database", "none"])
        // one worker: faster than two on two cores (the server needs them), and the
        // requests of a run come in one order
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .arg("--no-color");
    for label in EXCLUDED {
        command.args(["--exclude-name", label]);
    }
    let output = command.output().await?;
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    helix.stop().await;
    anyhow::ensure!(output.status.success(), "schemathesis found problems ({}):\n{stdout}\n{stderr}", output.status);
    // the summary, in the test's output for the record of operations and requests
    println!("{stdout}");
    Ok(())
}
