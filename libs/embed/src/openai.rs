//! An OpenAI-compatible embeddings endpoint: `POST {url}/embeddings` with
//! `{"model", "input": [...]}`, answered by `{"data": [{"embedding", "index"}]}`. OpenAI,
//! Azure-style proxies, vLLM, Ollama, LocalAI and text-embeddings-inference speak it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{EmbedError, Embedder, EmbedderInfo, EmbedderKind, Result, blocking, normalize};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URL up to the API version, e.g. `https://api.openai.com/v1`.
    pub url: String,
    /// e.g. `text-embedding-3-small`.
    pub model: String,
    /// Name of the environment variable that holds the API key (never the key itself);
    /// unset: requests carry no `Authorization` header (local servers).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The vectors' dimension when known; otherwise learnt from the first response.
    /// Checked against every response; not sent to the provider.
    #[serde(default)]
    pub dim: Option<usize>,
    /// Seconds one request may take.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Texts per request.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

fn default_timeout_secs() -> u64 {
    30
}

fn default_batch_size() -> usize {
    64
}

impl OpenAiConfig {
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            api_key_env: None,
            dim: None,
            timeout_secs: default_timeout_secs(),
            batch_size: default_batch_size(),
        }
    }
}

/// Cheap to clone: clones share the HTTP connection pool and the learnt dimension.
#[derive(Clone)]
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
    batch_size: usize,
    dim: Arc<OnceLock<usize>>,
}

/// Shows everything but the key.
impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("dim", &self.dim.get())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    embedding: Vec<f32>,
    index: usize,
}

impl OpenAiEmbedder {
    /// `api_key` is the key's value (see [`OpenAiConfig::api_key_env`]). Sends nothing yet.
    pub fn new(config: &OpenAiConfig, api_key: Option<String>) -> Result<Self> {
        let base = config.url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(EmbedError::Config(format!("openai url {:?} must start with http:// or https://", config.url)));
        }
        if config.model.is_empty() || config.batch_size == 0 || config.timeout_secs == 0 || config.dim == Some(0) {
            return Err(EmbedError::Config(
                "openai model must be set; batch_size, timeout_secs and dim above 0".into(),
            ));
        }
        let timeout = Duration::from_secs(config.timeout_secs);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| EmbedError::Config(format!("http client: {e}")))?;
        let dim = OnceLock::new();
        if let Some(d) = config.dim {
            let _ = dim.set(d);
        }
        Ok(Self {
            client,
            endpoint: format!("{base}/embeddings"),
            model: config.model.clone(),
            api_key,
            timeout,
            batch_size: config.batch_size,
            dim: Arc::new(dim),
        })
    }

    /// The dimension, if configured or learnt from a response yet.
    pub fn dim(&self) -> Option<usize> {
        self.dim.get().copied()
    }

    async fn request(&self, input: &[String]) -> Result<Vec<Vec<f32>>> {
        tracing::debug!(endpoint = %self.endpoint, model = %self.model, texts = input.len(), "embedding request");
        let mut request = self.client.post(&self.endpoint).json(&Request { model: &self.model, input });
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key); // marked sensitive: never in Debug output
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            let (status, message) = (status.as_u16(), error_message(&body));
            return Err(match status {
                401 | 403 => EmbedError::Unauthorized { status, message },
                429 => EmbedError::RateLimited { message, retry_after },
                400..=499 => EmbedError::Rejected { status, message },
                _ => EmbedError::Unavailable { status, message },
            });
        }
        // megabytes of JSON numbers for a large batch: parsed off the executor
        let response: Response = blocking(move || {
            serde_json::from_slice(&body).map_err(|e| {
                let start = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                EmbedError::InvalidResponse(format!("{e} in {start:?}"))
            })
        })
        .await?;
        self.in_input_order(response, input.len())
    }

    /// Orders `data` by `index` and checks it: one vector per input, all of one dimension.
    fn in_input_order(&self, response: Response, inputs: usize) -> Result<Vec<Vec<f32>>> {
        let invalid = |m: String| Err(EmbedError::InvalidResponse(m));
        if response.data.len() != inputs {
            return invalid(format!("{} embeddings for {inputs} inputs", response.data.len()));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; inputs];
        for item in response.data {
            let dim = *self.dim.get_or_init(|| item.embedding.len());
            if item.embedding.len() != dim || dim == 0 {
                return invalid(format!("an embedding of dimension {} where {dim} was expected", item.embedding.len()));
            }
            match out.get_mut(item.index) {
                Some(slot @ None) => {
                    let mut v = item.embedding;
                    normalize(&mut v); // OpenAI's are unit length already; other servers' may not be
                    *slot = Some(v);
                }
                _ => return invalid(format!("index {} is out of range or repeated", item.index)),
            }
        }
        Ok(out.into_iter().map(|v| v.expect("every index filled once")).collect())
    }

    fn transport_error(&self, e: reqwest::Error) -> EmbedError {
        if e.is_timeout() {
            return EmbedError::Timeout(self.timeout);
        }
        // reqwest's own message is "error sending request"; the causes say what happened
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        EmbedError::Transport(message)
    }
}

/// The provider's own words: OpenAI's `{"error": {"message": ...}}`, the `{"error": "..."}`
/// of several compatible servers, or the start of the body.
fn error_message(body: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = json.as_ref().and_then(|j| j.get("error"));
    if let Some(message) = error.and_then(|e| e.get("message").or(Some(e))).and_then(|m| m.as_str()) {
        return message.to_owned();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() { "no error message".to_owned() } else { text.chars().take(500).collect() }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    /// `dim` is 0 until configured or learnt; [`crate::from_config`] learns it before
    /// returning the embedder.
    fn info(&self) -> EmbedderInfo {
        EmbedderInfo {
            name: format!("openai:{}", self.model),
            dim: self.dim().unwrap_or(0),
            kind: EmbedderKind::Semantic,
        }
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.batch_size) {
            out.extend(self.request(batch).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use axum::Json;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use serde_json::{Value, json};

    use super::*;
    use crate::{norm, strings};

    pub(crate) const KEY: &str = "sk-test-0123456789";
    /// Dimension of the fake's vectors.
    pub(crate) const DIM: usize = 6;

    /// A stand-in for OpenAI speaking its wire format, on port 0. The model name picks the
    /// behaviour; every request's input count is recorded.
    pub(crate) struct Fake {
        pub(crate) url: String,
        pub(crate) batches: Arc<Mutex<Vec<usize>>>,
    }

    pub(crate) async fn spawn_fake() -> Fake {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let app =
            axum::Router::new().route("/v1/embeddings", axum::routing::post(embeddings)).with_state(batches.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        // ends with the test's runtime
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { url, batches }
    }

    /// Unnormalised and recognisable: the text's length, then 1..DIM.
    pub(crate) fn fake_vector(text: &str) -> Vec<f32> {
        std::iter::once(text.len() as f32).chain((1..DIM).map(|i| i as f32)).collect()
    }

    fn openai_error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
        let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
        (status, Json(body)).into_response()
    }

    async fn embeddings(
        State(batches): State<Arc<Mutex<Vec<usize>>>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Response {
        if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}")) {
            let message = "Incorrect API key provided: sk-wr**ng. You can find your API key at https://platform.openai.com/account/api-keys.";
            return openai_error(StatusCode::UNAUTHORIZED, message, "invalid_request_error", "invalid_api_key");
        }
        let inputs: Vec<String> = serde_json::from_value(body["input"].clone()).unwrap();
        batches.lock().unwrap().push(inputs.len());
        let model = body["model"].as_str().unwrap().to_owned();
        let mut data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": fake_vector(text)}))
            .collect();
        data.reverse(); // the wire order is not the input order: `index` is
        match model.as_str() {
            "rate-limited" => {
                let message = "Rate limit reached for text-embedding-3-small in organization org-x on requests per min (RPM): Limit 3000, Used 3000, Requested 1.";
                let mut response =
                    openai_error(StatusCode::TOO_MANY_REQUESTS, message, "requests", "rate_limit_exceeded");
                response.headers_mut().insert(header::RETRY_AFTER, "7".parse().unwrap());
                response
            }
            "missing-model" => openai_error(
                StatusCode::NOT_FOUND,
                "The model `missing-model` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            ),
            "broken" => {
                (StatusCode::BAD_GATEWAY, "upstream connect error or disconnect/reset before headers").into_response()
            }
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StatusCode::OK.into_response()
            }
            "short" => Json(json!({"object": "list", "data": &data[1..], "model": model})).into_response(),
            "repeated" => {
                data[0]["index"] = data[1]["index"].clone();
                Json(json!({"object": "list", "data": data, "model": model})).into_response()
            }
            _ => {
                let usage = json!({"prompt_tokens": inputs.len(), "total_tokens": inputs.len()});
                Json(json!({"object": "list", "data": data, "model": model, "usage": usage})).into_response()
            }
        }
    }

    fn config(fake: &Fake, model: &str) -> OpenAiConfig {
        OpenAiConfig { batch_size: 2, timeout_secs: 1, ..OpenAiConfig::new(&fake.url, model) }
    }

    #[tokio::test]
    async fn batches_reorders_by_index_and_normalises() {
        let fake = spawn_fake().await;
        let embedder = OpenAiEmbedder::new(&config(&fake, "text-embedding-3-small"), Some(KEY.into())).unwrap();
        assert_eq!(embedder.info().dim, 0, "not learnt yet");
        let texts = strings(&["a", "bb", "ccc", "dddd", "eeeee"]);
        let vectors = embedder.embed(&texts).await.unwrap();
        assert_eq!(*fake.batches.lock().unwrap(), [2, 2, 1]);
        for (text, v) in texts.iter().zip(&vectors) {
            let mut expected = fake_vector(text);
            normalize(&mut expected);
            assert_eq!(v, &expected, "{text:?} got another text's vector");
            assert!((norm(v) - 1.0).abs() < 1e-6);
        }
        let info = embedder.info();
        assert_eq!(
            info,
            EmbedderInfo { name: "openai:text-embedding-3-small".into(), dim: DIM, kind: EmbedderKind::Semantic }
        );
        assert!(embedder.embed(&[]).await.unwrap().is_empty());
        assert_eq!(fake.batches.lock().unwrap().len(), 3, "no request for no texts");
    }

    /// Every failure is an error naming what happened, in the provider's words where it
    /// gave some; none carries the key.
    #[tokio::test]
    async fn failures_map_to_clear_errors() {
        let fake = spawn_fake().await;
        let check = async |model: &str, key: &str, dim: Option<usize>, expected: &dyn Fn(&EmbedError) -> bool| {
            let embedder =
                OpenAiEmbedder::new(&OpenAiConfig { dim, ..config(&fake, model) }, Some(key.into())).unwrap();
            let err = embedder.embed(&strings(&["x", "y"])).await.unwrap_err();
            assert!(expected(&err), "{model}: {err:?}");
            assert!(!err.to_string().contains(key) && !format!("{err:?}{embedder:?}").contains(key), "{err}");
        };
        check("text-embedding-3-small", "sk-wrong", None, &|e| {
            matches!(e, EmbedError::Unauthorized { status: 401, message } if message.starts_with("Incorrect API key provided"))
        })
        .await;
        check("rate-limited", KEY, None, &|e| {
            matches!(e, EmbedError::RateLimited { message, retry_after: Some(d) } if message.starts_with("Rate limit reached") && d.as_secs() == 7)
                && e.is_transient()
        })
        .await;
        check("missing-model", KEY, None, &|e| {
            matches!(e, EmbedError::Rejected { status: 404, message } if message.contains("does not exist"))
                && !e.is_transient()
        })
        .await;
        check("broken", KEY, None, &|e| {
            matches!(e, EmbedError::Unavailable { status: 502, message } if message.starts_with("upstream connect error"))
        })
        .await;
        check("slow", KEY, None, &|e| matches!(e, EmbedError::Timeout(d) if d.as_secs() == 1)).await;
        check(
            "short",
            KEY,
            None,
            &|e| matches!(e, EmbedError::InvalidResponse(m) if m.contains("1 embeddings for 2 inputs")),
        )
        .await;
        check("repeated", KEY, None, &|e| matches!(e, EmbedError::InvalidResponse(m) if m.contains("repeated"))).await;
        check(
            "text-embedding-3-small",
            KEY,
            Some(1536),
            &|e| matches!(e, EmbedError::InvalidResponse(m) if m.contains("dimension 6 where 1536")),
        )
        .await;

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let embedder = OpenAiEmbedder::new(&OpenAiConfig::new(format!("http://{closed}/v1"), "m"), None).unwrap();
        let err = embedder.embed(&strings(&["x"])).await.unwrap_err();
        assert!(matches!(&err, EmbedError::Transport(m) if m.contains("onnect")), "{err}");

        let err = OpenAiEmbedder::new(&OpenAiConfig::new("api.openai.com/v1", "m"), None).unwrap_err();
        assert!(matches!(err, EmbedError::Config(_)), "{err}");
    }

    #[test]
    fn error_messages_come_from_the_body() {
        for (body, expected) in [
            (r#"{"error":{"message":"bad input","type":"invalid_request_error"}}"#, "bad input"),
            (r#"{"error":"model not loaded"}"#, "model not loaded"),
            (r#"{"detail":"nope"}"#, r#"{"detail":"nope"}"#),
            ("  ", "no error message"),
        ] {
            assert_eq!(error_message(body.as_bytes()), expected);
        }
    }
}
