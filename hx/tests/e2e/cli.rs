//! The `hx` binary as a user runs it: `hx up` in its own process, then `hx store`,
//! `hx recall` and `hx health` against it.

use std::process::Stdio;
use std::time::Duration;

use helix_testkit::{Backend, TestEnv};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

crate::on_both_backends!(hx_up_store_recall_and_restart);

const HX: &str = env!("CARGO_BIN_EXE_hx");

pub(crate) struct Running {
    pub(crate) child: Child,
    _stdout: Lines<BufReader<ChildStdout>>,
    pub(crate) url: String,
    pub(crate) printed_key: Option<String>,
}

/// Starts `hx up` on free ports and reads its banner (and the admin key, when printed).
pub(crate) async fn hx_up(env: &TestEnv) -> anyhow::Result<Running> {
    let mut command = Command::new(HX);
    command
        .arg("up")
        .envs(env.process_env().into_iter().filter(|(k, _)| *k != "HELIX_ADMIN_KEY"))
        .env("HELIX_GRPC_ADDR", "127.0.0.1:0")
        .env("HELIX_GATEWAY_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed_key = None;
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stdout.next_line().await? {
            if let Some(key) = line.strip_prefix("admin key: ") {
                printed_key = Some(key.to_owned());
            }
            if let Some(rest) = line.strip_prefix("helix is up: REST ") {
                return anyhow::Ok(rest.split(',').next().unwrap().to_owned());
            }
        }
        anyhow::bail!("hx up exited before it was up")
    })
    .await??;
    Ok(Running { child, _stdout: stdout, url, printed_key })
}

/// Stops `hx up` the way a service manager does: SIGTERM, then wait.
pub(crate) async fn terminate(mut running: Running) -> anyhow::Result<()> {
    let pid = running.child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status()?;
    let status = tokio::time::timeout(Duration::from_secs(30), running.child.wait()).await??;
    assert!(status.success(), "hx up exited with {status} after SIGTERM");
    Ok(())
}

/// Runs an `hx` client command with HELIX_HOME (so the key comes from admin.key).
async fn hx(env: &TestEnv, url: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = Command::new(HX)
        .args(args)
        .args(["--server", url])
        .env("HELIX_HOME", env.home())
        .env_remove("HELIX_API_KEY")
        .output()
        .await?;
    let text = String::from_utf8(output.stdout)? + &String::from_utf8(output.stderr)?;
    Ok((output.status.success(), text))
}

async fn hx_up_store_recall_and_restart(backend: Backend) -> anyhow::Result<()> {
    let env = TestEnv::new(backend).await?;
    let running = hx_up(&env).await?;
    let key = running.printed_key.clone().expect("the first start prints the admin key");
    let file = env.home().join("admin.key");
    assert_eq!(std::fs::read_to_string(&file)?.trim(), key);
    #[cfg(unix)]
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file)?.permissions()) & 0o777, 0o600);

    let (ok, out) = hx(
        &env,
        &running.url,
        &["store", "The", "mitochondria", "is", "the", "powerhouse", "--tag", "bio", "-n", "science"],
    )
    .await?;
    assert!(ok, "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    hx(&env, &running.url, &["store", "Unrelated", "note", "about", "cooking"]).await?;

    // recall is search, and `hx store` answers once its note is searchable: recall
    // right after finds it, every time
    let (ok, out) = hx(&env, &running.url, &["recall", "POWERHOUSE", "mito"]).await?;
    assert!(ok, "{out}");
    assert!(out.contains(&id) && out.contains("The mitochondria is the powerhouse"), "{out}");
    assert!(!out.contains("cooking"), "{out}");
    let (ok, out) = hx(&env, &running.url, &["recall", "nothing-like-this"]).await?;
    assert!(ok && out.contains("nothing found"), "{out}");
    for i in 0..50 {
        let word = format!("zebra{i}");
        let (ok, out) = hx(&env, &running.url, &["store", "Striped", "note", &word]).await?;
        assert!(ok, "{out}");
        let (ok, out) = hx(&env, &running.url, &["recall", &word]).await?;
        assert!(ok && out.contains(&word), "store then recall, round {i}: {out}");
    }

    let (ok, out) = hx(&env, &running.url, &["health"]).await?;
    assert!(ok && out.starts_with("ok"), "{out}");

    // curl's view: the printed key works on the REST API
    let http = reqwest::Client::new();
    let node: Value =
        http.get(format!("{}/api/v1/nodes/{id}", running.url)).bearer_auth(&key).send().await?.json().await?;
    assert_eq!(node["tags"], json!(["bio"]));

    terminate(running).await?;
    let running = hx_up(&env).await?;
    assert_eq!(running.printed_key, None, "the admin key is printed only on first start");
    let (ok, out) = hx(&env, &running.url, &["recall", "mitochondria", "--json"]).await?;
    assert!(ok, "{out}");
    let page: Value = serde_json::from_str(&out)?;
    assert_eq!(page["results"][0]["id"], json!(id));
    terminate(running).await?;

    let (ok, out) = hx(&env, "http://127.0.0.1:9", &["recall", "x"]).await?;
    assert!(!ok && out.contains("cannot reach the gateway"), "{out}");
    Ok(())
}

/// `hx pair` on the admin's machine prints a code; `hx pair confirm` on the device saves
/// its own key, which later `hx` calls from that device use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hx_pair_on_both_sides() -> anyhow::Result<()> {
    let env = TestEnv::new(Backend::Embedded).await?;
    let running = hx_up(&env).await?;
    let (ok, out) = hx(&env, &running.url, &["pair", "--scope", "nodes:read", "--scope", "search:read"]).await?;
    assert!(ok, "{out}");
    let code = out.lines().find_map(|l| l.strip_prefix("pairing code: ")).expect("a code").to_owned();
    assert!(out.contains(&format!("hx pair confirm {code} --server {}", running.url)), "{out}");

    let device = tempfile::tempdir()?;
    let on_device = |args: &[&str]| {
        let mut command = Command::new(HX);
        command
            .args(args)
            .args(["--server", &running.url])
            .env("HELIX_HOME", device.path())
            .env_remove("HELIX_API_KEY");
        command.output()
    };
    let output = on_device(&["pair", "confirm", &code, "--name", "phone"]).await?;
    let text = String::from_utf8(output.stdout)? + &String::from_utf8(output.stderr)?;
    assert!(output.status.success() && text.contains("paired as key"), "{text}");
    let saved = device.path().join("pairing.json");
    #[cfg(unix)]
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&saved)?.permissions()) & 0o777, 0o600);
    let output = on_device(&["recall", "anything"]).await?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = on_device(&["store", "a", "note"]).await?;
    let text = String::from_utf8(output.stderr)?;
    assert!(!output.status.success() && text.contains("nodes:write"), "the paired key reads only: {text}");
    let output = on_device(&["pair", "confirm", &code]).await?;
    assert!(!output.status.success(), "a code pairs once");
    terminate(running).await?;
    Ok(())
}
