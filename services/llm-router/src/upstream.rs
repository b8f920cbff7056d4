//! Calls to providers over HTTP: one pooled client for the process (keep-alive, HTTP/2
//! by ALPN over TLS), the request each protocol wants, errors read into
//! [`UpstreamError`] (every provider's error body has its message where
//! `openai::error_message` looks), and streams decoded chunk by chunk as they arrive.

use std::collections::VecDeque;
use std::time::Duration;

use crate::providers::{Protocol, Provider};
use crate::sse::{LineDecoder, SseDecoder, SseEvent};
use crate::types::{ChatRequest, Completion, Delta, EmbeddingAnswer, FailureKind, UpstreamError};
use crate::{anthropic, bedrock, cohere, gemini, ollama, openai, sigv4};

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

    /// A POST of `body` to `url` with the provider's key as its protocol sends it, or
    /// signed with its AWS credentials.
    fn post(
        &self,
        provider: &Provider,
        url: String,
        body: &serde_json::Value,
    ) -> Result<reqwest::RequestBuilder, UpstreamError> {
        if let Some(credentials) = &provider.aws {
            let bytes = serde_json::to_vec(body).map_err(|e| UpstreamError::malformed(e.to_string()))?;
            let parsed = reqwest::Url::parse(&url)
                .map_err(|_| UpstreamError::new(FailureKind::BadRequest, "the provider's URL does not parse"))?;
            // the Host header as the client will send it: the port only when not the default
            let host = match parsed.port() {
                Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or_default()),
                None => parsed.host_str().unwrap_or_default().to_owned(),
            };
            let signed = sigv4::sign(credentials, bedrock::SERVICE, &host, parsed.path(), &bytes, &sigv4::amz_date());
            let builder = self.client.post(url).header("content-type", "application/json").body(bytes);
            return Ok(signed.into_iter().fold(builder, |b, (name, value)| b.header(name, value)));
        }
        let builder = self.client.post(url).json(body);
        let Some(key) = &provider.api_key else { return Ok(builder) };
        Ok(match provider.protocol {
            Protocol::Anthropic => builder.header("x-api-key", key.expose()),
            Protocol::Gemini => builder.header(gemini::KEY_HEADER, key.expose()),
            _ => builder.bearer_auth(key.expose()),
        })
    }

    fn request(
        &self,
        provider: &Provider,
        model: &str,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, UpstreamError> {
        let base = &provider.base_url;
        let (url, body) = match provider.protocol {
            Protocol::OpenAi => (format!("{base}{}", openai::PATH), openai::request_body(model, request, stream)),
            Protocol::Anthropic => {
                (format!("{base}{}", anthropic::PATH), anthropic::request_body(model, request, stream))
            }
            Protocol::Gemini => {
                let action = if stream { gemini::STREAM } else { gemini::GENERATE };
                (gemini::url(base, model, action)?, gemini::request_body(request))
            }
            Protocol::Ollama => (format!("{base}{}", ollama::CHAT_PATH), ollama::request_body(model, request, stream)),
            Protocol::Cohere => (format!("{base}{}", cohere::CHAT_PATH), cohere::request_body(model, request, stream)),
            Protocol::Bedrock => (format!("{base}{}", bedrock::path(model, stream)?), bedrock::request_body(request)),
        };
        let builder = self.post(provider, url, &body)?;
        let builder = match provider.protocol {
            Protocol::Anthropic => builder.header("anthropic-version", anthropic::VERSION),
            _ => builder,
        };
        Ok(match provider.protocol {
            Protocol::Ollama if stream => builder.header("accept", "application/x-ndjson"),
            Protocol::Bedrock if stream => builder.header("accept", bedrock::EVENT_STREAM),
            _ if stream => builder.header("accept", "text/event-stream"),
            _ => builder,
        })
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
            Protocol::Gemini => gemini::parse_response(&body),
            Protocol::Ollama => ollama::parse_response(&body),
            Protocol::Cohere => cohere::parse_response(&body),
            Protocol::Bedrock => bedrock::parse_response(&body),
            Protocol::OpenAi => openai::parse_response(&body),
        }
    }

    /// One attempt at embeddings, on the provider's own embeddings route; the caller
    /// bounds its time.
    pub async fn embed(
        &self,
        provider: &Provider,
        model: &str,
        inputs: &[String],
        dimensions: Option<u32>,
    ) -> Result<EmbeddingAnswer, UpstreamError> {
        let base = &provider.base_url;
        let (url, body) = match provider.protocol {
            Protocol::OpenAi => {
                (format!("{base}{}", openai::EMBEDDINGS_PATH), openai::embeddings_body(model, inputs, dimensions))
            }
            Protocol::Gemini => {
                (gemini::url(base, model, gemini::EMBED)?, gemini::embeddings_body(model, inputs, dimensions))
            }
            Protocol::Ollama => {
                (format!("{base}{}", ollama::EMBED_PATH), ollama::embeddings_body(model, inputs, dimensions))
            }
            Protocol::Cohere => {
                (format!("{base}{}", cohere::EMBED_PATH), cohere::embeddings_body(model, inputs, dimensions))
            }
            Protocol::Bedrock => return self.embed_on_bedrock(provider, model, inputs, dimensions).await,
            Protocol::Anthropic => {
                return Err(UpstreamError::new(
                    FailureKind::Unsupported,
                    format!("{} has no embeddings endpoint here", provider.name),
                ));
            }
        };
        let response = self.post(provider, url, &body)?.send().await.map_err(send_error)?;
        let response = check_status(response).await?;
        let body = read_limited(response, MAX_BODY).await?;
        match provider.protocol {
            Protocol::Gemini => gemini::parse_embeddings(&body, inputs.len()),
            Protocol::Ollama => ollama::parse_embeddings(&body, inputs.len()),
            Protocol::Cohere => cohere::parse_embeddings(&body, inputs.len()),
            _ => openai::parse_embeddings(&body, inputs.len()),
        }
    }

    /// Bedrock's embeddings: `InvokeModel` calls, a few at once for Titan (one text a
    /// call), in batches for Cohere. Tokens are summed from what each call reports; a
    /// call that reports none makes the total unknown (the reservation is then kept).
    async fn embed_on_bedrock(
        &self,
        provider: &Provider,
        model: &str,
        inputs: &[String],
        dimensions: Option<u32>,
    ) -> Result<EmbeddingAnswer, UpstreamError> {
        use futures::{StreamExt as _, TryStreamExt as _};
        /// Titan calls in flight at once for one request
        const TITAN_IN_FLIGHT: usize = 8;
        let url = format!("{}{}", provider.base_url, bedrock::invoke_path(model)?);
        let invoke = |body: serde_json::Value| {
            let builder = self.post(provider, url.clone(), &body);
            async move {
                let response = builder?.send().await.map_err(send_error)?;
                let response = check_status(response).await?;
                let tokens = response
                    .headers()
                    .get(bedrock::INPUT_TOKENS_HEADER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                Ok::<_, UpstreamError>((read_limited(response, MAX_BODY).await?, tokens))
            }
        };
        let answers: Vec<EmbeddingAnswer> = match bedrock::embed_family(model)? {
            bedrock::EmbedFamily::Titan => {
                // built first: a stream holding the closures is not Send for every lifetime
                let calls: Vec<_> = inputs
                    .iter()
                    .map(|text| {
                        let call = invoke(bedrock::titan_body(text, dimensions));
                        async move {
                            let (body, header_tokens) = call.await?;
                            let (vector, tokens) = bedrock::parse_titan(&body)?;
                            Ok::<_, UpstreamError>((vec![vector], tokens.or(header_tokens)))
                        }
                    })
                    .collect();
                futures::stream::iter(calls).buffered(TITAN_IN_FLIGHT).try_collect().await?
            }
            bedrock::EmbedFamily::Cohere => {
                let calls: Vec<_> = inputs
                    .chunks(bedrock::COHERE_TEXTS_PER_CALL)
                    .map(|texts| {
                        let (call, n) = (invoke(bedrock::cohere_body(texts, dimensions)), texts.len());
                        async move {
                            let (body, tokens) = call.await?;
                            Ok::<_, UpstreamError>((bedrock::parse_cohere(&body, n)?, tokens))
                        }
                    })
                    .collect();
                futures::stream::iter(calls).buffered(2).try_collect().await?
            }
        };
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut tokens = Some(0);
        for (batch, batch_tokens) in answers {
            vectors.extend(batch);
            tokens = tokens.zip(batch_tokens).map(|(a, b)| a + b);
        }
        Ok((vectors, tokens))
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
        let (framing, decoder) = match provider.protocol {
            Protocol::Anthropic => (Framing::default(), Decoder::Anthropic(anthropic::StreamDecoder::default())),
            Protocol::Gemini => (Framing::default(), Decoder::Gemini(gemini::StreamDecoder::default())),
            Protocol::Cohere => (Framing::default(), Decoder::Cohere(cohere::StreamDecoder::default())),
            Protocol::Ollama => {
                (Framing::Lines(LineDecoder::default()), Decoder::Ollama(ollama::StreamDecoder::default()))
            }
            Protocol::Bedrock => (
                Framing::AwsEvents(bedrock::EventStreamDecoder::default()),
                Decoder::Bedrock(bedrock::StreamDecoder::default()),
            ),
            Protocol::OpenAi => (Framing::default(), Decoder::OpenAi(openai::StreamDecoder::default())),
        };
        Ok(UpstreamStream { response, framing, decoder, pending: VecDeque::new(), idle, ended: false })
    }
}

/// How a stream's bytes become events: server-sent events, one JSON object a line, or
/// AWS's binary event-stream messages.
enum Framing {
    Sse(SseDecoder),
    Lines(LineDecoder),
    AwsEvents(bedrock::EventStreamDecoder),
}

impl Default for Framing {
    fn default() -> Self {
        Self::Sse(SseDecoder::default())
    }
}

impl Framing {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        match self {
            Self::Sse(d) => d.feed(bytes),
            Self::Lines(d) => d.feed(bytes),
            Self::AwsEvents(d) => d.feed(bytes),
        }
    }
}

enum Decoder {
    OpenAi(openai::StreamDecoder),
    Anthropic(anthropic::StreamDecoder),
    Gemini(gemini::StreamDecoder),
    Ollama(ollama::StreamDecoder),
    Cohere(cohere::StreamDecoder),
    Bedrock(bedrock::StreamDecoder),
}

impl Decoder {
    fn decode(&mut self, event: SseEvent, out: &mut Vec<Delta>) -> Result<(), UpstreamError> {
        match self {
            Self::OpenAi(d) => d.decode(event, out),
            Self::Anthropic(d) => d.decode(event, out),
            Self::Gemini(d) => d.decode(event, out),
            Self::Ollama(d) => d.decode(event, out),
            Self::Cohere(d) => d.decode(event, out),
            Self::Bedrock(d) => d.decode(event, out),
        }
    }

    /// Whether the protocol's end marker arrived.
    fn is_done(&self) -> bool {
        match self {
            Self::OpenAi(d) => d.done,
            Self::Anthropic(d) => d.done,
            Self::Gemini(d) => d.done,
            Self::Ollama(d) => d.done,
            Self::Cohere(d) => d.done,
            Self::Bedrock(d) => d.done,
        }
    }
}

/// A provider's stream as deltas. It ends with `None` only after the protocol's end
/// marker (`[DONE]`, `message_stop`, a Gemini `finishReason`, Ollama's `done: true`,
/// Cohere's `message-end`, Bedrock's `messageStop`); a connection cut before it, a silence longer than
/// the idle timeout, or an unreadable event is an error.
pub struct UpstreamStream {
    response: reqwest::Response,
    framing: Framing,
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
        self.decoder.is_done()
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        let events = self.framing.feed(bytes).map_err(UpstreamError::malformed)?;
        let mut out = Vec::new();
        for event in events {
            self.decoder.decode(event, &mut out)?;
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

#[cfg(test)]
mod tests {
    use helix_runtime::config::Secret;

    use super::*;
    use crate::sigv4::AwsCredentials;
    use crate::types::{Message, Role};

    fn provider(protocol: Protocol, aws: Option<AwsCredentials>) -> Provider {
        Provider {
            name: "p".into(),
            display_name: "p".into(),
            protocol,
            base_url: "http://127.0.0.1:9".into(),
            api_key: Some(Secret::new("key-1")),
            aws,
            configured: true,
            enabled: true,
            priority: 0,
            default_model: String::new(),
        }
    }

    /// Each protocol's route and credentials, as the request leaves (built, not sent).
    #[test]
    fn each_protocol_sends_its_route_and_key_its_way() {
        let upstream = Upstream::new().unwrap();
        let chat = ChatRequest { messages: vec![Message::text(Role::User, "Hi")], ..ChatRequest::default() };
        // (protocol, model, the URL's path, header carrying the key, its value)
        let cases = [
            (Protocol::OpenAi, "m", "/chat/completions", "authorization", "Bearer key-1"),
            (Protocol::Anthropic, "m", "/v1/messages", "x-api-key", "key-1"),
            (
                Protocol::Gemini,
                "gemini-2.5-flash",
                "/v1beta/models/gemini-2.5-flash:generateContent",
                "x-goog-api-key",
                "key-1",
            ),
            (Protocol::Ollama, "llama3.2", "/api/chat", "authorization", "Bearer key-1"),
            (Protocol::Cohere, "command-r-plus", "/v2/chat", "authorization", "Bearer key-1"),
            (Protocol::Bedrock, "a.b-v1:0", "/model/a.b-v1%3A0/converse", "authorization", "Bearer key-1"),
        ];
        for (protocol, model, path, header, value) in cases {
            let request = upstream.request(&provider(protocol, None), model, &chat, false).unwrap().build().unwrap();
            assert_eq!(request.url().path(), path, "{protocol:?}");
            assert_eq!(request.headers()[header], value, "{protocol:?}");
        }
    }

    /// With AWS credentials, Bedrock's request is signed for the host (port included)
    /// and the encoded path it goes to, over the body it carries.
    #[test]
    fn bedrock_requests_are_signed_as_they_are_sent() {
        let credentials = AwsCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: Secret::new("s3cret"),
            session_token: None,
            region: "eu-west-1".into(),
        };
        let upstream = Upstream::new().unwrap();
        let chat = ChatRequest { messages: vec![Message::text(Role::User, "Hi")], ..ChatRequest::default() };
        let provider = provider(Protocol::Bedrock, Some(credentials.clone()));
        let request = upstream.request(&provider, "a.b-v1:0", &chat, true).unwrap().build().unwrap();
        assert_eq!(request.url().path(), "/model/a.b-v1%3A0/converse-stream");
        assert_eq!(request.headers()["accept"], bedrock::EVENT_STREAM);
        let date = request.headers()["x-amz-date"].to_str().unwrap();
        let body = request.body().and_then(reqwest::Body::as_bytes).unwrap();
        let expected = sigv4::sign(&credentials, "bedrock", "127.0.0.1:9", request.url().path(), body, date);
        let authorization = request.headers()["authorization"].to_str().unwrap();
        assert_eq!(Some(authorization), expected.iter().find(|(n, _)| *n == "authorization").map(|(_, v)| v.as_str()));
        assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKID/"), "{authorization}");
        assert!(authorization.contains("/eu-west-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, "));
        assert!(!authorization.contains("s3cret") && !authorization.contains("key-1"));
    }
}
