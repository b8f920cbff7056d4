use std::time::Duration;

pub type Result<T, E = EmbedError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The embedder's settings cannot work (a missing model directory, an unset key variable).
    #[error("embedding configuration: {0}")]
    Config(String),
    /// The local model could not be loaded or run.
    #[error("embedding model: {0}")]
    Model(String),
    /// The provider refused the credentials (HTTP 401 or 403).
    #[error("embedding provider refused the credentials (HTTP {status}): {message}")]
    Unauthorized { status: u16, message: String },
    /// The provider's rate limit or quota (HTTP 429); `retry_after` from its `Retry-After`.
    #[error("embedding provider rate limit (HTTP 429): {message}")]
    RateLimited { message: String, retry_after: Option<Duration> },
    /// Any other 4xx: the request itself is wrong (unknown model, input too long, ...).
    #[error("embedding provider rejected the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// A 5xx: the provider failed.
    #[error("embedding provider failed (HTTP {status}): {message}")]
    Unavailable { status: u16, message: String },
    #[error("embedding provider did not answer within {0:?}")]
    Timeout(Duration),
    /// No HTTP answer at all: connection refused, DNS, TLS.
    #[error("embedding provider unreachable: {0}")]
    Transport(String),
    /// An answer that is not a valid embeddings response.
    #[error("embedding provider's response is invalid: {0}")]
    InvalidResponse(String),
    /// The blocking task running the model panicked or was cancelled.
    #[error("embedding task failed: {0}")]
    Task(String),
}

impl EmbedError {
    /// Whether the same request may succeed later (rate limits, timeouts, provider outages).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Unavailable { .. } | Self::Timeout(_) | Self::Transport(_))
    }
}
