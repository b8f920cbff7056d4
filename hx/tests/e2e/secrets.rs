//! Credentials: the `/api/v1/secrets` routes (names, origins, change times; values only
//! with `secrets:read` and the server's `vault.allow_reveal`), every read and change in
//! the audit log without a value, a provider key stored only in the vault used by the
//! router for a real call (issue 16, must-show 4), the environment winning over the
//! vault, `hx health` saying where each credential comes from, and a vault that cannot
//! be opened stopping the start. That no planted value reaches a log is
//! `auth::no_secret_in_any_log`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use helix_runtime::HelixConfig;
use helix_testkit::llm::{FakeLlm, quick_retries};
use helix_testkit::{Backend, TestEnv, TestHelix};
use helix_vault::{Vault, VaultConfig};
use hx::fleet::Role;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::{code, read};

crate::on_both_backends!(secrets_routes_reveal_rules_and_audit, a_provider_key_only_in_the_vault_reaches_the_provider);

const HX: &str = env!("CARGO_BIN_EXE_hx");

/// A Helix configured by `configure`, its vault holding `planted` before it starts.
async fn start(
    backend: Backend,
    planted: &[(&str, &str)],
    configure: impl FnOnce(&mut HelixConfig),
) -> anyhow::Result<TestHelix> {
    let mut env = TestEnv::new(backend).await?;
    configure(&mut env.config);
    plant(&env.home(), &env.config.vault, planted)?;
    let node = env.start(&Role::ALL).await?;
    let base_url = node.gateway_url().expect("gateway role runs");
    Ok(TestHelix { env, node: Some(node), base_url, http: reqwest::Client::new() })
}

/// Writes `secrets` into the vault of `home` with `helix_vault`, as `hx keychain set` does.
fn plant(home: &Path, config: &VaultConfig, secrets: &[(&str, &str)]) -> anyhow::Result<()> {
    let vault = Vault::open(home, config)?;
    for (name, value) in secrets {
        vault.set(name, (*value).into())?;
    }
    Ok(())
}

/// A value nobody else could produce, to look for later.
fn canary(what: &str) -> String {
    format!("{what}-canary-{}", uuid::Uuid::now_v7().simple())
}

/// A new key with `scopes` (and `namespaces`), made by the admin through the API.
async fn issue(helix: &TestHelix, scopes: &[&str], namespaces: Option<&[&str]>) -> anyhow::Result<String> {
    let mut body = json!({"name": format!("secrets {scopes:?}"), "scopes": scopes});
    if let Some(namespaces) = namespaces {
        body["namespaces"] = json!(namespaces);
    }
    let (status, issued) = read(helix.api(Method::POST, "/api/v1/keys").json(&body).send().await?).await;
    anyhow::ensure!(status == 201, "{body}: {status} {issued}");
    Ok(issued["secret"].as_str().unwrap_or_default().to_owned())
}

/// What a call must answer: the status, and for errors the code.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Answered(u16),
    Refused(u16, &'static str),
}

/// One call of the table: who, what, and the expected answer; returns the body.
async fn check(
    helix: &TestHelix,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    expect: Expect,
) -> anyhow::Result<Value> {
    let mut request = helix.http.request(method.clone(), helix.url(path)).bearer_auth(key);
    if let Some(body) = &body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let cache = response.headers().get("cache-control").map(|v| v.to_str().unwrap_or_default().to_owned());
    let (status, answer) = read(response).await;
    let held = match expect {
        Expect::Answered(expected) => status == expected,
        Expect::Refused(expected, expected_code) => status == expected && code(&answer) == expected_code,
    };
    anyhow::ensure!(held, "{method} {path} {body:?}: expected {expect:?}, got {status} {answer}");
    if status == 200 {
        anyhow::ensure!(cache.as_deref() == Some("no-store"), "{method} {path}: Cache-Control {cache:?}");
    }
    Ok(answer)
}

/// The entry of `name` in a list or status answer.
fn entry<'a>(answer: &'a Value, name: &str) -> Option<&'a Value> {
    answer["secrets"].as_array()?.iter().find(|s| s["name"] == name)
}

async fn secrets_routes_reveal_rules_and_audit(backend: Backend) -> anyhow::Result<()> {
    // a known credential and a name of the operator's own, both only in the vault
    for name in ["VENICE_API_KEY", "TEAM_TOKEN"] {
        assert!(std::env::var_os(name).is_none(), "this test needs {name} unset in its environment");
    }
    let venice = canary("venice");
    let team = canary("team");
    let planted = [("VENICE_API_KEY", venice.as_str()), ("TEAM_TOKEN", team.as_str())];
    let mut helix = start(backend, &planted, |config| config.vault.allow_reveal = false).await?;
    let admin = helix.env.admin_key.clone();
    let (reader, secrets_only, revealer, limited) = (
        issue(&helix, &["read"], None).await?,
        issue(&helix, &["secrets:read"], None).await?,
        issue(&helix, &["admin", "secrets:read"], None).await?,
        issue(&helix, &["admin"], Some(&["team"])).await?,
    );
    let (admin, reader, secrets_only, revealer, limited) =
        (admin.as_str(), reader.as_str(), secrets_only.as_str(), revealer.as_str(), limited.as_str());
    let written = canary("written");
    let replaced = canary("replaced");

    use Expect::{Answered, Refused};
    let venice_path = "/api/v1/secrets/VENICE_API_KEY";
    let reveal = "/api/v1/secrets/VENICE_API_KEY?reveal=true";
    // (key, method, path, body, expected) — on a server with allow_reveal off
    let calls: Vec<(&str, Method, &str, Option<Value>, Expect)> = vec![
        (admin, Method::GET, "/api/v1/secrets", None, Answered(200)),
        (admin, Method::GET, "/api/v1/secrets/status", None, Answered(200)),
        (admin, Method::GET, venice_path, None, Answered(200)),
        (admin, Method::GET, "/api/v1/secrets/VENICE_API_KEY?reveal=false", None, Answered(200)),
        // not admin: no route of these
        (reader, Method::GET, "/api/v1/secrets", None, Refused(403, "forbidden")),
        (reader, Method::GET, "/api/v1/secrets/status", None, Refused(403, "forbidden")),
        (reader, Method::GET, venice_path, None, Refused(403, "forbidden")),
        (reader, Method::PUT, venice_path, Some(json!({"value": "x"})), Refused(403, "forbidden")),
        (reader, Method::DELETE, venice_path, None, Refused(403, "forbidden")),
        // secrets:read alone is not admin
        (secrets_only, Method::GET, reveal, None, Refused(403, "forbidden")),
        // credentials belong to the whole deployment
        (limited, Method::GET, "/api/v1/secrets", None, Refused(403, "namespace_limited")),
        (limited, Method::GET, venice_path, None, Refused(403, "namespace_limited")),
        // the server's switch is off: no key reveals, the scope or not
        (admin, Method::GET, reveal, None, Refused(403, "reveal_disabled")),
        (revealer, Method::GET, reveal, None, Refused(403, "reveal_disabled")),
        // names and values refused
        (admin, Method::GET, "/api/v1/secrets/9LIVES", None, Refused(400, "invalid_secret_name")),
        (admin, Method::GET, "/api/v1/secrets/has%20space", None, Refused(400, "invalid_secret_name")),
        (
            admin,
            Method::PUT,
            "/api/v1/secrets/bad$name",
            Some(json!({"value": "v"})),
            Refused(400, "invalid_secret_name"),
        ),
        (admin, Method::PUT, "/api/v1/secrets/A", Some(json!({"value": ""})), Refused(400, "empty_value")),
        (admin, Method::PUT, "/api/v1/secrets/A", Some(json!({"value": " \n "})), Refused(400, "empty_value")),
        (
            admin,
            Method::PUT,
            "/api/v1/secrets/A",
            Some(json!({"value": "v".repeat(70_000)})),
            Refused(400, "value_too_large"),
        ),
        (admin, Method::PUT, "/api/v1/secrets/A", Some(json!({})), Refused(422, "invalid_body")),
        (
            admin,
            Method::PUT,
            "/api/v1/secrets/A",
            Some(json!({"value": "v", "note": "x"})),
            Refused(422, "unknown_field"),
        ),
        (admin, Method::DELETE, "/api/v1/secrets/NEVER_STORED", None, Refused(404, "secret_not_in_vault")),
        (admin, Method::DELETE, "/api/v1/secrets/-x", None, Refused(400, "invalid_secret_name")),
        // a write, a replacement, a removal
        (admin, Method::PUT, "/api/v1/secrets/WRITTEN_TOKEN", Some(json!({"value": written})), Answered(200)),
        (admin, Method::PUT, "/api/v1/secrets/TEAM_TOKEN", Some(json!({"value": replaced})), Answered(200)),
        (admin, Method::DELETE, "/api/v1/secrets/WRITTEN_TOKEN", None, Answered(200)),
    ];
    let mut answers = Vec::new();
    for (key, method, path, body, expect) in calls {
        answers.push(check(&helix, key, method, path, body, expect).await?);
    }

    // what the reads said: names, origins, times, who reads them; never a value
    let list = check(&helix, admin, Method::GET, "/api/v1/secrets", None, Answered(200)).await?;
    let venice_entry = entry(&list, "VENICE_API_KEY").expect("a known name is listed");
    assert_eq!((venice_entry["set"].as_bool(), venice_entry["origin"].as_str()), (Some(true), Some("vault")));
    assert!(venice_entry["used_by"].as_str().unwrap().contains("Venice"), "{venice_entry}");
    assert!(venice_entry["changed_at"].is_string(), "{venice_entry}");
    let team_entry = entry(&list, "TEAM_TOKEN").expect("a vault-only name is listed");
    assert_eq!((team_entry["origin"].as_str(), &team_entry["used_by"]), (Some("vault"), &Value::Null));
    let unset = entry(&list, "XAI_API_KEY").expect("every known name is listed");
    if std::env::var_os("XAI_API_KEY").is_none() {
        assert_eq!((unset["set"].as_bool(), unset["origin"].as_str()), (Some(false), Some("unset")), "{unset}");
        assert!(unset["changed_at"].is_null());
    }
    assert!(entry(&list, "WRITTEN_TOKEN").is_none(), "removed from the vault: {list}");
    let status = check(&helix, admin, Method::GET, "/api/v1/secrets/status", None, Answered(200)).await?;
    let vault_file = helix.env.home().join("vault.hxb");
    assert_eq!(status["vault"]["path"], json!(vault_file.display().to_string()));
    assert_eq!(status["vault"]["exists"], true);
    assert!(status["vault"]["key_source"].as_str().unwrap().contains("generated key file"), "{status}");
    assert_eq!(status["allow_reveal"], false);
    let one = &answers[2];
    assert_eq!(one["name"], "VENICE_API_KEY");
    assert!(one.get("value").is_none(), "no value without a reveal: {one}");
    // the environment is read only for names Helix reads: PATH is not a credential
    let path = check(&helix, admin, Method::GET, "/api/v1/secrets/PATH", None, Answered(200)).await?;
    assert_eq!((path["set"].as_bool(), path["origin"].as_str()), (Some(false), Some("unset")), "{path}");
    // the writes are the vault's, as another process (hx keychain) sees it
    let outside = Vault::open(&helix.env.home(), &VaultConfig::default())?;
    assert_eq!(outside.get("TEAM_TOKEN").map(|v| v.expose_secret().to_owned()), Some(replaced.clone()));
    assert!(outside.get("WRITTEN_TOKEN").is_none());
    let stored = &answers[answers.len() - 2];
    assert_eq!((stored["origin"].as_str(), stored["environment_wins"].as_bool()), (Some("vault"), Some(false)));

    // the same server with reveals allowed: the scope decides
    helix.env.config.vault.allow_reveal = true;
    helix.restart().await?;
    check(&helix, admin, Method::GET, reveal, None, Refused(403, "secrets_scope_required")).await?;
    let revealed = check(&helix, revealer, Method::GET, reveal, None, Answered(200)).await?;
    assert_eq!(revealed["value"], json!(venice), "{revealed}");
    let plain = check(&helix, revealer, Method::GET, venice_path, None, Answered(200)).await?;
    assert!(plain.get("value").is_none(), "a value only when asked for: {plain}");
    let team_value =
        check(&helix, revealer, Method::GET, "/api/v1/secrets/TEAM_TOKEN?reveal=true", None, Answered(200)).await?;
    assert_eq!(team_value["value"], json!(replaced));
    check(
        &helix,
        revealer,
        Method::GET,
        "/api/v1/secrets/XAI_API_KEY_NOT?reveal=true",
        None,
        Refused(404, "secret_not_set"),
    )
    .await?;
    check(&helix, revealer, Method::GET, "/api/v1/secrets/PATH?reveal=true", None, Refused(404, "secret_not_set"))
        .await?;
    let status = check(&helix, admin, Method::GET, "/api/v1/secrets/status", None, Answered(200)).await?;
    assert_eq!(status["allow_reveal"], true);

    // every read and change is in the audit log, reveals marked; no value is
    let deadline = Instant::now() + Duration::from_secs(15);
    let entries = loop {
        let (status, page) = read(helix.api(Method::GET, "/api/v1/audit/query?limit=1000").send().await?).await;
        assert_eq!(status, 200, "{page}");
        let mut entries = page["entries"].as_array().cloned().unwrap_or_default();
        entries.retain(|e| e["action"].as_str().is_some_and(|a| a.contains(" /api/v1/secrets")));
        let revealed = |status: u64| {
            entries.iter().any(|e| e["action"] == "GET /api/v1/secrets/{key}?reveal=true" && e["status"] == status)
        };
        if revealed(200)
            && revealed(404)
            && entries.iter().filter(|e| e["action"] == "GET /api/v1/secrets/status").count() >= 3
        {
            break entries;
        }
        anyhow::ensure!(Instant::now() < deadline, "the secrets calls were not all recorded: {entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let recorded = |action: &str, status: u64, resource: Option<&str>| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["status"] == status && resource.is_none_or(|r| e["resource_id"] == r))
    };
    let expected = [
        ("GET /api/v1/secrets", 200, None),
        ("GET /api/v1/secrets", 403, None),
        ("GET /api/v1/secrets/status", 200, None),
        ("GET /api/v1/secrets/{key}", 200, Some("VENICE_API_KEY")),
        ("GET /api/v1/secrets/{key}", 400, Some("9LIVES")),
        ("GET /api/v1/secrets/{key}?reveal=true", 403, Some("VENICE_API_KEY")),
        ("GET /api/v1/secrets/{key}?reveal=true", 200, Some("VENICE_API_KEY")),
        ("GET /api/v1/secrets/{key}?reveal=true", 200, Some("TEAM_TOKEN")),
        ("PUT /api/v1/secrets/{key}", 200, Some("WRITTEN_TOKEN")),
        ("PUT /api/v1/secrets/{key}", 200, Some("TEAM_TOKEN")),
        ("PUT /api/v1/secrets/{key}", 400, Some("A")),
        ("PUT /api/v1/secrets/{key}", 403, Some("VENICE_API_KEY")),
        ("DELETE /api/v1/secrets/{key}", 200, Some("WRITTEN_TOKEN")),
        ("DELETE /api/v1/secrets/{key}", 404, Some("NEVER_STORED")),
    ];
    for (action, status, resource) in expected {
        assert!(recorded(action, status, resource), "no audit entry {action} {status} {resource:?}: {entries:#?}");
    }
    let (_, everything) = read(helix.api(Method::GET, "/api/v1/audit/query?limit=1000").send().await?).await;
    let everything = everything.to_string();
    for value in [&venice, &team, &written, &replaced] {
        assert!(!everything.contains(value.as_str()), "a secret's value is in the audit log");
    }
    let db = helix_runtime::db::Database::connect(&helix.env.config, "gateway").await?;
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT action, resource_type, resource_id FROM audit_log").fetch_all(&db.pool).await?;
    db.pool.close().await;
    let table = format!("{rows:?}");
    for value in [&venice, &team, &written, &replaced] {
        assert!(!table.contains(value.as_str()), "a secret's value is in the audit table");
    }
    helix.stop().await;
    Ok(())
}

/// Must-show 4: the router's DeepSeek key is only in the vault (no variable, no
/// configured key), and the fake provider — which refuses any other key as DeepSeek's
/// OpenAI-compatible API does — answers the call made with it.
async fn a_provider_key_only_in_the_vault_reaches_the_provider(backend: Backend) -> anyhow::Result<()> {
    assert!(std::env::var_os("DEEPSEEK_API_KEY").is_none(), "this test needs DEEPSEEK_API_KEY unset");
    let key = format!("sk-{}", canary("vault-deepseek"));
    let fake = FakeLlm::start().await?;
    fake.require_key(key.clone());

    // the fake refuses a wrong key in each provider's own error format
    let http = reqwest::Client::new();
    let refusals = [
        ("/v1/chat/completions", "authorization", "Bearer sk-wrong", 401, "/error/code", json!("invalid_api_key")),
        ("/v1/messages", "x-api-key", "sk-wrong", 401, "/error/type", json!("authentication_error")),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "x-goog-api-key",
            "wrong",
            400,
            "/error/details/0/reason",
            json!("API_KEY_INVALID"),
        ),
        ("/v2/chat", "authorization", "Bearer wrong", 401, "/message", json!("invalid api token")),
    ];
    for (path, header, value, status, pointer, expected) in refusals {
        let response =
            http.post(format!("{}{path}", fake.url)).header(header, value).json(&json!({"model": "m"})).send().await?;
        let (got, body) = read(response).await;
        assert_eq!((got, body.pointer(pointer)), (status, Some(&expected)), "{path}: {body}");
    }
    let before = fake.count();

    let helix = start(backend, &[("DEEPSEEK_API_KEY", &key)], |config| {
        quick_retries(config);
        // the fake is DeepSeek: only its URL is configured, not its key
        let deepseek = config.llm.providers.entry("deepseek".to_owned()).or_default();
        deepseek.base_url = Some(format!("{}/v1", fake.url));
        config.llm.max_retries = 0;
    })
    .await?;
    let (status, origin) = read(helix.api(Method::GET, "/api/v1/secrets/DEEPSEEK_API_KEY").send().await?).await;
    assert_eq!((status, origin["origin"].as_str()), (200, Some("vault")), "{origin}");

    let call = json!({"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "Hi"}]});
    let (status, body) = read(helix.api(Method::POST, "/v1/chat/completions").json(&call).send().await?).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from the fake");
    let sent = fake.received();
    assert_eq!(sent.len(), before + 1);
    assert_eq!(sent[before].key.as_deref(), Some(key.as_str()), "the vault's key was sent");

    // the same call once the provider expects another key: refused, so the 200 above
    // was the vault's key being right, not the fake accepting anything
    fake.require_key("sk-some-other-key");
    let (status, body) = read(helix.api(Method::POST, "/v1/chat/completions").json(&call).send().await?).await;
    assert!(status >= 400, "a wrong key must fail the call: {status} {body}");
    assert!(!body.to_string().contains(&key), "{body}");
    helix.stop().await;
    Ok(())
}

/// An `hx up` of `env` with `extra` variables, and where its REST API answers.
struct Running {
    child: tokio::process::Child,
    url: String,
}

async fn hx_up(env: &TestEnv, extra: &[(&str, &str)]) -> anyhow::Result<Running> {
    let out = env.home().join("up.out");
    let mut child = tokio::process::Command::new(HX)
        .arg("up")
        .envs(env.process_env())
        .envs(extra.iter().copied())
        .env("HELIX_GRPC_ADDR", "127.0.0.1:0")
        .env("HELIX_GATEWAY_ADDR", "127.0.0.1:0")
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let printed = std::fs::read_to_string(&out)?;
        if let Some(rest) = printed.lines().find_map(|l| l.strip_prefix("helix is up: REST ")) {
            let url = rest.split(',').next().unwrap().to_owned();
            return Ok(Running { child, url });
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("hx up exited {status}: {printed}");
        }
        anyhow::ensure!(Instant::now() < deadline, "hx up did not come up: {printed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The environment wins over the vault, and says so; `hx health` names where each
/// credential comes from, never its value, and only to a key that may see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_wins_and_hx_health_says_where_each_comes_from() -> anyhow::Result<()> {
    let env = TestEnv::new(Backend::Embedded).await?;
    let from_env = canary("env-anthropic");
    let shadowed = canary("vault-anthropic");
    let vaulted = canary("vault-mistral");
    plant(&env.home(), &VaultConfig::default(), &[("ANTHROPIC_API_KEY", &shadowed), ("MISTRAL_API_KEY", &vaulted)])?;
    let mut running = hx_up(&env, &[("ANTHROPIC_API_KEY", &from_env)]).await?;
    let http = reqwest::Client::new();
    let api =
        |method: Method, path: &str| http.request(method, format!("{}{path}", running.url)).bearer_auth(&env.admin_key);

    let (status, one) = read(api(Method::GET, "/api/v1/secrets/ANTHROPIC_API_KEY").send().await?).await;
    assert_eq!((status, one["origin"].as_str()), (200, Some("environment")), "{one}");
    assert!(one["changed_at"].is_string(), "the vault holds it too: {one}");
    let replaced = canary("vault-anthropic-2");
    let (status, change) =
        read(api(Method::PUT, "/api/v1/secrets/ANTHROPIC_API_KEY").json(&json!({"value": replaced})).send().await?)
            .await;
    assert_eq!(status, 200, "{change}");
    assert_eq!((change["origin"].as_str(), change["environment_wins"].as_bool()), (Some("environment"), Some(true)));
    assert!(change["message"].as_str().unwrap().contains("environment"), "{change}");

    let health = |key: Option<String>| {
        let mut command = tokio::process::Command::new(HX);
        command.args(["health", "--server", &running.url]).env("HELIX_HOME", env.home()).env_remove("HELIX_API_KEY");
        if let Some(key) = key {
            command.env("HELIX_API_KEY", key);
        }
        command.output()
    };
    let output = health(Some(env.admin_key.clone())).await?;
    let text = String::from_utf8(output.stdout)? + &String::from_utf8(output.stderr)?;
    assert!(output.status.success() && text.starts_with("ok"), "{text}");
    let line = |name: &str| text.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_default().to_owned();
    assert!(text.contains(&format!("vault {}", env.home().join("vault.hxb").display())), "{text}");
    assert!(line("ANTHROPIC_API_KEY").contains("environment"), "{text}");
    assert!(line("MISTRAL_API_KEY").contains("vault") && line("MISTRAL_API_KEY").contains("Mistral"), "{text}");
    for value in [&from_env, &shadowed, &vaulted, &replaced] {
        assert!(!text.contains(value.as_str()), "hx health printed a value: {text}");
    }
    // a key that may not list credentials gets the health alone
    let (status, issued) =
        read(api(Method::POST, "/api/v1/keys").json(&json!({"name": "r", "scopes": ["read"]})).send().await?).await;
    assert_eq!(status, 201, "{issued}");
    let output = health(issued["secret"].as_str().map(str::to_owned)).await?;
    let text = String::from_utf8(output.stdout)?;
    assert!(output.status.success() && text.starts_with("ok") && !text.contains("credentials"), "{text}");

    running.child.kill().await?;
    Ok(())
}

/// Damages the vault of a test's home.
type Breaks<'a> = dyn Fn() -> anyhow::Result<()> + 'a;

/// A vault file that exists but cannot be opened stops `hx up` and `hx serve` with a
/// sentence naming the file and what to set; nothing is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_that_cannot_be_opened_stops_the_start() -> anyhow::Result<()> {
    let env = TestEnv::new(Backend::Embedded).await?;
    let home = env.home();
    let vault_file = home.join("vault.hxb");
    let start = |args: &'static [&'static str]| {
        tokio::process::Command::new(HX)
            .args(args)
            .envs(env.process_env())
            .env("HELIX_GRPC_ADDR", "127.0.0.1:0")
            .env("HELIX_GATEWAY_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
    };
    // (how the vault is broken, what the error must say besides the file)
    let cases: [(&str, &Breaks<'_>, &str); 3] = [
        (
            "its key file is gone",
            &|| {
                plant(&home, &VaultConfig::default(), &[("OPENAI_API_KEY", "sk-x")])?;
                std::fs::remove_file(home.join("vault.key"))?;
                Ok(())
            },
            "HELIX_VAULT_KEY_FILE",
        ),
        (
            "it is not a vault",
            &|| {
                std::fs::write(&vault_file, b"not a vault at all")?;
                Ok(())
            },
            "HXB1",
        ),
        (
            "one byte of it changed",
            &|| {
                let _ = std::fs::remove_file(&vault_file);
                let _ = std::fs::remove_file(home.join("vault.key"));
                plant(&home, &VaultConfig::default(), &[("OPENAI_API_KEY", "sk-x")])?;
                let mut bytes = std::fs::read(&vault_file)?;
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                std::fs::write(&vault_file, bytes)?;
                Ok(())
            },
            "HELIX_VAULT_PASSPHRASE",
        ),
    ];
    for (case, break_it, says) in cases {
        break_it()?;
        for args in [&["up"][..], &["serve", "storage"][..]] {
            let output = tokio::time::timeout(Duration::from_secs(60), start(args)).await??;
            let text = String::from_utf8(output.stdout)? + &String::from_utf8(output.stderr)?;
            assert!(!output.status.success(), "{case}: hx {args:?} started: {text}");
            assert!(!text.contains("helix is up"), "{case}: {text}");
            assert!(text.contains("credential vault"), "{case}: {text}");
            assert!(text.contains(&vault_file.display().to_string()), "{case}: the file is named: {text}");
            assert!(text.contains(says), "{case}: says {says}: {text}");
        }
    }
    Ok(())
}
