//! Calls to providers over HTTP: one pooled client for the process (keep-alive, HTTP/2
//! by ALPN over TLS), the request each protocol wants, errors read into
//! [`UpstreamError`], and streams decoded chunk by chunk as they arrive.

use std::collections::VecDeque;
use std::time::Duration;

use crate::providers::{Protocol, Provider};
use crate::sse::SseDecoder;
use crate::types::{ChatRequest, Completion, Delta, FailureKind, UpstreamError};
use crate::{anthropic, openai};

/// Error bodies are read up to this size; what follows is not worth holding.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// A whole (non-streamed) answer larger than this is refused.
const MAX_BODY: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
}

impl Upstream {
    pub fn new() -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(512)
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .user_agent(concat!("helix-llm-router/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Self { client })
    }

    fn request(
        &self,
        provider: &Provider,
        model: &str,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, UpstreamError> {
        let builder = match provider.protocol {
            Protocol::OpenAi => {
                let body = openai::request_body(model, request, stream);
                let builder = self.client.post(format!("{}{}", provider.base_url, openai::PATH)).json(&body);
                match &provider.api_key {
                    Some(key) => builder.bearer_auth(key.expose()),
                    None => builder,
                }
            }
            Protocol::Anthropic => {
                let body = anthropic::request_body(model, request, stream);
                let builder = self
                    .client
                    .post(format!("{}{}", provider.base_url, anthropic::PATH))
                    .header("anthropic-version", anthropic::VERSION)
                    .json(&body);
                match &provider.api_key {
                    Some(key) => builder.header("x-api-key", key.expose()),
                    None => builder,
                }
            }
            Protocol::Bedrock => {
                return Err(UpstreamError::new(
                    FailureKind::Unsupported,
                    "the AWS Bedrock adapter (Converse API, SigV4) is not built yet",
                ));
            }
        };
        Ok(if stream { builder.header("accept", "text/event-stream") } else { builder })
    }

    /// One attempt at a whole answer; the caller bounds its time.
    pub async fn complete(
        &self,
        provider: &Provider,
        model: &str,
        request: &ChatRequest,
    ) -> Result<Completion, UpstreamError> {
        let builder = self.request(provider, model, request, false)?;
        let response = builder.send().await.map_err(send_error)?;
        let response = check_status(response).await?;
        let body = read_limited(response, MAX_BODY).await?;
        match provider.protocol {
            Protocol::Anthropic => anthropic::parse_response(&body),
            _ => openai::parse_response(&body),
        }
    }

    /// One attempt at embeddings (OpenAI's wire: every provider with embeddings here
    /// speaks it); the caller bounds its time.
    pub async fn embed(
        &self,
        provider: &Provider,
        model: &str,
        inputs: &[String],
        dimensions: Option<u32>,
    ) -> Result<(Vec<Vec<f32>>, Option<u64>), UpstreamError> {
        if provider.protocol != Protocol::OpenAi {
            return Err(UpstreamError::new(
                FailureKind::Unsupported,
                format!("{} has no OpenAI-style embeddings endpoint", provider.name),
            ));
        }
        let body = openai::embeddings_body(model, inputs, dimensions);
        let mut builder = self.client.post(format!("{}{}", provider.base_url, openai::EMBEDDINGS_PATH)).json(&body);
        if let Some(key) = &provider.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        let response = builder.send().await.map_err(send_error)?;
        let response = check_status(response).await?;
        let body = read_limited(response, MAX_BODY).await?;
        openai::parse_embeddings(&body, inputs.len())
    }

    /// Sends a streamed call and waits for its response head; the caller bounds that
    /// time, `idle` bounds each silence after it.
    pub async fn open_stream(
        &self,
        provider: &Provider,
        model: &str,
        request: &ChatRequest,
        idle: Duration,
    ) -> Result<UpstreamStream, UpstreamError> {
        let builder = self.request(provider, model, request, true)?;
        let response = builder.send().await.map_err(send_error)?;
        let response = check_status(response).await?;
        let decoder = match provider.protocol {
            Protocol::Anthropic => Decoder::Anthropic(anthropic::StreamDecoder::default()),
            _ => Decoder::OpenAi(openai::StreamDecoder::default()),
        };
        Ok(UpstreamStream {
            response,
            sse: SseDecoder::default(),
            decoder,
            pending: VecDeque::new(),
            idle,
            ended: false,
        })
    }
}

enum Decoder {
    OpenAi(openai::StreamDecoder),
    Anthropic(anthropic::StreamDecoder),
}

/// A provider's stream as deltas. It ends with `None` only after the protocol's end
/// marker (`[DONE]`, `message_stop`); a connection cut before it, a silence longer than
/// the idle timeout, or an unreadable event is an error.
pub struct UpstreamStream {
    response: reqwest::Response,
    sse: SseDecoder,
    decoder: Decoder,
    pending: VecDeque<Delta>,
    idle: Duration,
    ended: bool,
}

impl UpstreamStream {
    pub async fn next(&mut self) -> Option<Result<Delta, UpstreamError>> {
        loop {
            if let Some(delta) = self.pending.pop_front() {
                return Some(Ok(delta));
            }
            if self.ended {
                return None;
            }
            let chunk = match tokio::time::timeout(self.idle, self.response.chunk()).await {
                Err(_) => Err(UpstreamError::new(
                    FailureKind::Timeout,
                    format!("the stream was silent for {} ms", self.idle.as_millis()),
                )),
                Ok(Err(error)) => Err(UpstreamError::malformed(format!("the stream broke: {}", describe(&error)))),
                Ok(Ok(None)) if self.is_done() => {
                    self.ended = true;
                    return None;
                }
                Ok(Ok(None)) => Err(UpstreamError::malformed("the stream ended before its end marker")),
                Ok(Ok(Some(bytes))) => self.decode(&bytes),
            };
            if let Err(error) = chunk {
                self.ended = true;
                return Some(Err(error));
            }
        }
    }

    fn is_done(&self) -> bool {
        match &self.decoder {
            Decoder::OpenAi(d) => d.done,
            Decoder::Anthropic(d) => d.done,
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        let events = self.sse.feed(bytes).map_err(UpstreamError::malformed)?;
        let mut out = Vec::new();
        for event in events {
            match &mut self.decoder {
                Decoder::OpenAi(d) => d.decode(event, &mut out)?,
                Decoder::Anthropic(d) => d.decode(event, &mut out)?,
            }
        }
        self.pending.extend(out);
        Ok(())
    }
}

fn send_error(error: reqwest::Error) -> UpstreamError {
    let kind = if error.is_timeout() { FailureKind::Timeout } else { FailureKind::Connect };
    UpstreamError::new(kind, format!("cannot reach the provider: {}", describe(&error)))
}

/// The error and its causes, without the URL (which may carry an account id).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.without_url_ref().to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let text = self.to_string();
        match self.url() {
            Some(url) => text.replace(&format!(" for url ({url})"), ""),
            None => text,
        }
    }
}

async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, UpstreamError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(response.headers());
    let body = read_limited(response, MAX_ERROR_BODY).await.unwrap_or_default();
    let message = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(value) => openai::error_message(&value),
        Err(_) => String::from_utf8_lossy(&body).chars().take(500).collect(),
    };
    Err(UpstreamError::from_status(status.as_u16(), message, retry_after))
}

/// `retry-after-ms` (OpenAI), else `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok()) {
        return (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok().or(Some(Duration::ZERO))
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, UpstreamError> {
    let mut body = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|e| UpstreamError::malformed(format!("the answer broke: {}", describe(&e))))?
    {
        if body.len() + chunk.len() > limit {
            return Err(UpstreamError::malformed(format!("the answer is larger than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
