//! How a service reads a credential: the environment first (what an operator sets for
//! one run, or Kubernetes injects from a Secret), then the vault. Which one answered
//! is itself answerable, so `hx health` and `/api/v1/secrets/status` can say where a
//! credential came from without ever showing it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;

use crate::Vault;

/// Where a credential's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Environment,
    Vault,
    Unset,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Environment => "environment",
            Self::Vault => "vault",
            Self::Unset => "unset",
        }
    }
}

type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The environment, then the vault. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    vault: Option<Arc<Vault>>,
    env: Arc<EnvLookup>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("vault", &self.vault.as_ref().map(|v| v.path())).finish()
    }
}

impl Credentials {
    /// The process environment, then `vault`.
    pub fn new(vault: Option<Arc<Vault>>) -> Self {
        Self::with_env(vault, |name| std::env::var(name).ok())
    }

    /// `env` standing in for the process environment (tests pass a table).
    pub fn with_env(vault: Option<Arc<Vault>>, env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self { vault, env: Arc::new(env) }
    }

    /// No vault, no environment: every credential unset.
    pub fn none() -> Self {
        Self::with_env(None, |_| None)
    }

    pub fn get(&self, name: &str) -> Option<SecretString> {
        self.env_value(name).map(SecretString::from).or_else(|| self.vault.as_ref()?.get(name))
    }

    pub fn origin(&self, name: &str) -> Origin {
        if self.env_value(name).is_some() {
            Origin::Environment
        } else if self.vault.as_ref().is_some_and(|v| v.get(name).is_some()) {
            Origin::Vault
        } else {
            Origin::Unset
        }
    }

    /// When the vault's value of `name` last changed (the environment's has no time).
    pub fn changed_at(&self, name: &str) -> Option<DateTime<Utc>> {
        self.vault.as_ref()?.changed_at(name)
    }

    pub fn vault(&self) -> Option<&Arc<Vault>> {
        self.vault.as_ref()
    }

    /// An empty variable counts as unset, as everywhere in Helix's configuration.
    fn env_value(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }
}

/// A credential Helix reads by name, and who reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KnownCredential {
    pub name: &'static str,
    pub used_by: &'static str,
}

const fn known(name: &'static str, used_by: &'static str) -> KnownCredential {
    KnownCredential { name, used_by }
}

/// Every credential Helix reads by name: one table, so the status route, `hx health`
/// and `hx setup` list the same names the services read (the router's test checks its
/// provider table against it).
pub const KNOWN: &[KnownCredential] = &[
    known("ANTHROPIC_API_KEY", "llm-router: Anthropic"),
    known("OPENAI_API_KEY", "llm-router: OpenAI"),
    known("GOOGLE_API_KEY", "llm-router: Google Gemini"),
    known("GEMINI_API_KEY", "llm-router: Google Gemini"),
    known("XAI_API_KEY", "llm-router: xAI"),
    known("DEEPSEEK_API_KEY", "llm-router: DeepSeek"),
    known("OPENROUTER_API_KEY", "llm-router: OpenRouter"),
    known("MISTRAL_API_KEY", "llm-router: Mistral"),
    known("TOGETHER_API_KEY", "llm-router: Together"),
    known("FIREWORKS_API_KEY", "llm-router: Fireworks"),
    known("PERPLEXITY_API_KEY", "llm-router: Perplexity"),
    known("CLOUDFLARE_API_KEY", "llm-router: Cloudflare Workers AI"),
    known("CLOUDFLARE_API_TOKEN", "llm-router: Cloudflare Workers AI"),
    known("VENICE_API_KEY", "llm-router: Venice"),
    known("COHERE_API_KEY", "llm-router: Cohere"),
    known("CO_API_KEY", "llm-router: Cohere"),
    known("AWS_ACCESS_KEY_ID", "llm-router: Amazon Bedrock"),
    known("AWS_SECRET_ACCESS_KEY", "llm-router: Amazon Bedrock"),
    known("AWS_SESSION_TOKEN", "llm-router: Amazon Bedrock"),
    known("AWS_BEARER_TOKEN_BEDROCK", "llm-router: Amazon Bedrock"),
    known("QDRANT_API_KEY", "search: Qdrant cluster"),
    known("HELIX_GRPC_TOKEN", "every service: the fleet's gRPC token"),
    known("GITHUB_TOKEN", "sources: GitHub repositories"),
    known("SLACK_BOT_TOKEN", "notifications: Slack adapter"),
    known("DISCORD_WEBHOOK_URL", "notifications: Discord adapter"),
    known("TELEGRAM_BOT_TOKEN", "notifications: Telegram adapter"),
    known("MATRIX_ACCESS_TOKEN", "notifications: Matrix adapter"),
    known("SMTP_PASSWORD", "notifications: Email adapter"),
    known("HELIX_WEBHOOK_SIGNING_SECRET", "notifications: outbound webhook signatures"),
];
