/// Everything that can go wrong on the event bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The subject cannot be published (malformed, or not listed in `subjects::ALL`).
    #[error("invalid event subject {subject:?}: {reason}")]
    InvalidSubject { subject: String, reason: &'static str },
    /// The subscription filter is malformed or matches no Helix subject.
    #[error("invalid subscription filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: &'static str },
    /// The consumer group name is not usable.
    #[error("invalid consumer group {group:?}: {reason}")]
    InvalidGroup { group: String, reason: &'static str },
    /// The configuration is not usable.
    #[error("invalid events configuration: {0}")]
    Config(String),
    /// An envelope or payload could not be encoded or decoded.
    #[error("event encoding: {0}")]
    Codec(#[from] serde_json::Error),
    /// NATS could not be reached within the connect timeout.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// A NATS or JetStream operation failed.
    #[error("NATS {operation} failed: {source}")]
    Nats {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bus was closed.
    #[error("the event bus is closed")]
    Closed,
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn nats(operation: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Nats { operation, source: source.into() }
    }
}
