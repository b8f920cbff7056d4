//! Malformed requests: each gets its 4xx and error code, and the store is unchanged.

use helix_testkit::{Backend, TestHelix};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{code, read};

crate::on_both_backends!(bad_input_is_refused_and_changes_nothing);

enum Auth {
    Admin,
    None,
    Wrong,
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    /// raw body, sent as JSON unless `content_type` says otherwise
    body: Option<String>,
    content_type: Option<&'static str>,
    auth: Auth,
    status: u16,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: Method,
    path: impl Into<String>,
    body: Option<String>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        body,
        content_type: Some("application/json"),
        auth: Auth::Admin,
        status,
        code,
    }
}

fn json_body(value: Value) -> Option<String> {
    Some(value.to_string())
}

async fn bad_input_is_refused_and_changes_nothing(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let (_, seed) =
        read(helix.api(Method::POST, "/api/v1/nodes").json(&json!({"content": "seed", "tags": ["s"]})).send().await?)
            .await;
    let seed_id = seed["id"].as_str().unwrap().to_owned();
    let node = |id: &str| format!("/api/v1/nodes/{id}");
    let unknown = uuid::Uuid::now_v7().to_string();
    let too_big = format!("{{\"content\": \"{}\"}}", "x".repeat(helix.env.config.gateway.max_body_bytes + 1));

    let mut cases = vec![
        case("truncated json", Method::POST, "/api/v1/nodes", Some("{\"content\": ".into()), 400, "malformed_json"),
        case("not json at all", Method::POST, "/api/v1/nodes", Some("content=hello".into()), 400, "malformed_json"),
        Case {
            content_type: None,
            ..case(
                "no content type",
                Method::POST,
                "/api/v1/nodes",
                json_body(json!({"content": "x"})),
                415,
                "unsupported_media_type",
            )
        },
        Case {
            content_type: Some("text/plain"),
            ..case(
                "text content type",
                Method::POST,
                "/api/v1/nodes",
                json_body(json!({"content": "x"})),
                415,
                "unsupported_media_type",
            )
        },
        case("missing content", Method::POST, "/api/v1/nodes", json_body(json!({"title": "t"})), 422, "invalid_body"),
        case(
            "content of the wrong type",
            Method::POST,
            "/api/v1/nodes",
            json_body(json!({"content": 5})),
            422,
            "invalid_body",
        ),
        case(
            "tags of the wrong type",
            Method::POST,
            "/api/v1/nodes",
            json_body(json!({"content": "x", "tags": "a"})),
            422,
            "invalid_body",
        ),
        case(
            "metadata not an object",
            Method::POST,
            "/api/v1/nodes",
            json_body(json!({"content": "x", "metadata": [1]})),
            422,
            "invalid_body",
        ),
        case(
            "blank content",
            Method::POST,
            "/api/v1/nodes",
            json_body(json!({"content": "  \n"})),
            400,
            "empty_content",
        ),
        case(
            "namespace with a space",
            Method::POST,
            "/api/v1/nodes",
            json_body(json!({"content": "x", "namespace": "a b"})),
            400,
            "invalid_namespace",
        ),
        case(
            "upper-case kind",
            Method::POST,
            "/api/v1/nodes",
            json_body(json!({"content": "x", "kind": "Fact"})),
            400,
            "invalid_kind",
        ),
        case(
            "importance out of range",
            Method::POST,
            "/api/v1/nodes",
            json_body(json!({"content": "x", "importance": 2})),
            400,
            "invalid_importance",
        ),
        case(
            "empty tag",
            Method::POST,
            "/api/v1/nodes",
            json_body(json!({"content": "x", "tags": [""]})),
            400,
            "invalid_tag",
        ),
        case("body over the limit", Method::POST, "/api/v1/nodes", Some(too_big), 413, "payload_too_large"),
        case("id not a uuid", Method::GET, "/api/v1/nodes/not-a-uuid", None, 400, "invalid_id"),
        case("unknown id", Method::GET, node(&unknown), None, 404, "not_found"),
        case("delete unknown id", Method::DELETE, node(&unknown), None, 404, "not_found"),
        case(
            "update unknown id",
            Method::PUT,
            node(&unknown),
            json_body(json!({"version": 1, "content": "x"})),
            404,
            "not_found",
        ),
        case(
            "update without version",
            Method::PUT,
            node(&seed_id),
            json_body(json!({"content": "x"})),
            422,
            "invalid_body",
        ),
        case(
            "update at a stale version",
            Method::PUT,
            node(&seed_id),
            json_body(json!({"version": 9, "content": "x"})),
            409,
            "version_conflict",
        ),
        case(
            "update to blank content",
            Method::PUT,
            node(&seed_id),
            json_body(json!({"version": 1, "content": ""})),
            400,
            "empty_content",
        ),
        case("limit not a number", Method::GET, "/api/v1/nodes?limit=abc", None, 400, "invalid_query"),
        case("limit too large", Method::GET, "/api/v1/nodes?limit=5000", None, 400, "invalid_limit"),
        case("cursor not issued", Method::GET, "/api/v1/nodes?cursor=garbage", None, 400, "invalid_cursor"),
        case(
            "bulk with one bad node",
            Method::POST,
            "/api/v1/nodes/bulk",
            json_body(json!({"nodes": [{"content": "fine"}, {"content": ""}]})),
            400,
            "empty_content",
        ),
        case(
            "bulk with no nodes",
            Method::POST,
            "/api/v1/nodes/bulk",
            json_body(json!({"nodes": []})),
            400,
            "empty_bulk",
        ),
        case(
            "bulk without nodes field",
            Method::POST,
            "/api/v1/nodes/bulk",
            json_body(json!([{"content": "x"}])),
            422,
            "invalid_body",
        ),
        Case {
            auth: Auth::None,
            ..case(
                "no api key",
                Method::POST,
                "/api/v1/nodes",
                json_body(json!({"content": "x"})),
                401,
                "unauthenticated",
            )
        },
        Case {
            auth: Auth::Wrong,
            ..case(
                "api key not in the key format",
                Method::POST,
                "/api/v1/nodes",
                json_body(json!({"content": "x"})),
                401,
                "malformed_api_key",
            )
        },
        case(
            "method not allowed",
            Method::PATCH,
            node(&seed_id),
            json_body(json!({"content": "x"})),
            405,
            "method_not_allowed",
        ),
        case("unknown route", Method::GET, "/api/v1/nowhere", None, 404, "route_not_found"),
    ];
    // text fields: control characters refused with the field named, never stripped
    let node_field = |name: &'static str, body: Value, code: &'static str| {
        case(name, Method::POST, "/api/v1/nodes", json_body(body), 400, code)
    };
    cases.extend([
        node_field("title of control characters", json!({"content": "x", "title": "\u{1}\u{2}\u{7}"}), "invalid_title"),
        node_field("title of two lines", json!({"content": "x", "title": "one\ntwo"}), "invalid_title"),
        node_field("tag with an escape", json!({"content": "x", "tags": ["a\u{1b}[31m"]}), "invalid_tag"),
        node_field("namespace with a tab", json!({"content": "x", "namespace": "a\tb"}), "invalid_namespace"),
        node_field("kind with a newline", json!({"content": "x", "kind": "note\n"}), "invalid_kind"),
        node_field("content with NUL", json!({"content": "a\u{0}b"}), "invalid_content"),
        node_field("source with CRLF", json!({"content": "x", "source": "https://x/\r\nA: b"}), "invalid_source"),
    ]);
    // job times: from 1970 to 9999 (the jobs service's rule, so gRPC callers get it too)
    for run_at in ["-262143-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "+10000-01-01T00:00:00Z"] {
        let body = json_body(json!({"kind": "echo", "run_at": run_at}));
        cases.push(case("run_at out of range", Method::POST, "/api/v1/jobs", body, 400, "invalid_run_at"));
    }
    // one rule for every list's limit: absent, the default; else from 1 to 1000 (search,
    // suggest and similar to their own lower maxima), never 0, never clamped silently
    let lists = [
        ("/api/v1/nodes", 1000),
        ("/api/v1/recall?q=x", 1000),
        ("/api/v1/jobs", 1000),
        ("/api/v1/jobs/dead-letter", 1000),
        ("/api/v1/jobs/schedules", 1000),
        ("/api/v1/workflows", 1000),
        ("/api/v1/workflows/executions", 1000),
        ("/api/scheduler/executions", 1000),
        ("/api/v1/graph/edges", 1000),
        ("/api/v1/scheduler/tasks/ready", 1000),
        ("/api/v1/llm/usage", 1000),
        ("/api/analytics/token-usage", 1000),
        ("/api/v1/search?q=x", 100),
        ("/api/v1/search/suggest?q=x", 50),
    ];
    for (list, max) in lists {
        let sep = if list.contains('?') { '&' } else { '?' };
        for limit in [0, max + 1] {
            let path = format!("{list}{sep}limit={limit}");
            cases.push(case("limit 0 or over the maximum", Method::GET, path, None, 400, "invalid_limit"));
        }
    }
    assert!(cases.len() >= 15);

    let snapshot = || async {
        let (_, page) = read(helix.api(Method::GET, "/api/v1/nodes?limit=1000").send().await.unwrap()).await;
        page
    };
    let before = snapshot().await;
    assert_eq!(before["nodes"].as_array().unwrap().len(), 1);
    for case in cases {
        let mut request = helix.http.request(case.method.clone(), helix.url(&case.path));
        request = match case.auth {
            Auth::Admin => request.bearer_auth(&helix.env.admin_key),
            Auth::Wrong => request.bearer_auth("hx_not_a_key"),
            Auth::None => request,
        };
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(body) = case.body {
            request = request.body(body);
        }
        let (status, body) = read(request.send().await?).await;
        assert_eq!((status, code(&body)), (case.status, case.code), "{} ({}): {body}", case.name, case.path);
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}: {body}", case.name);
        assert_eq!(snapshot().await, before, "{} changed the store", case.name);
    }
    helix.stop().await;
    Ok(())
}
