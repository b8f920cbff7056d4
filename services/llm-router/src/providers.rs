//! Every provider the seed names: its key variable, default base URL, the variable its
//! official SDK reads for another base URL, and the wire protocol its adapter speaks.
//! Most speak OpenAI's chat completions and share one adapter.
//!
//! The base URL is, by precedence: `[llm.providers.<name>] base_url`, the SDK's
//! variable, the default. The key: `api_key`, the variable named by `api_key_env`,
//! the provider's own variable — each variable from the environment, then the vault
//! ([`lookup`]); a base URL never from the vault.

use std::collections::BTreeMap;

use helix_runtime::config::{LlmConfig, LlmProviderConfig, Secret};

use crate::sigv4::AwsCredentials;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST {base}/chat/completions` (OpenAI, and the many compatible APIs)
    OpenAi,
    /// `POST {base}/v1/messages` (Anthropic's Messages API)
    Anthropic,
    /// `POST {base}/v1beta/models/{model}:generateContent` (Google's Gemini API)
    Gemini,
    /// `POST {base}/api/chat` (Ollama's native API, newline-delimited JSON streams)
    Ollama,
    /// `POST {base}/v2/chat` (Cohere's v2 API)
    Cohere,
    /// `POST {base}/model/{model}/converse` (AWS Bedrock's Converse API, SigV4 or a
    /// Bedrock API key)
    Bedrock,
}

impl Protocol {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "openai" => Some(Self::OpenAi),
            "anthropic" => Some(Self::Anthropic),
            "gemini" => Some(Self::Gemini),
            "ollama" => Some(Self::Ollama),
            "cohere" => Some(Self::Cohere),
            "bedrock" => Some(Self::Bedrock),
            _ => None,
        }
    }
}

/// A provider as the code knows it before configuration.
pub struct Known {
    pub name: &'static str,
    pub display_name: &'static str,
    pub protocol: Protocol,
    pub base_url: &'static str,
    /// the SDK's base URL variable, where the provider's official SDK has one
    pub base_url_env: Option<&'static str>,
    /// environment variables that hold the key, first found wins; empty: no key needed
    pub key_env: &'static [&'static str],
    pub default_model: &'static str,
}

/// The catalogue, in the default order of preference.
pub const KNOWN: &[Known] = &[
    Known {
        name: "anthropic",
        display_name: "Anthropic Claude",
        protocol: Protocol::Anthropic,
        base_url: "https://api.anthropic.com",
        base_url_env: Some("ANTHROPIC_BASE_URL"),
        key_env: &["ANTHROPIC_API_KEY"],
        default_model: "claude-sonnet-4-5",
    },
    Known {
        name: "openai",
        display_name: "OpenAI",
        protocol: Protocol::OpenAi,
        base_url: "https://api.openai.com/v1",
        base_url_env: Some("OPENAI_BASE_URL"),
        key_env: &["OPENAI_API_KEY"],
        default_model: "gpt-4o-mini",
    },
    Known {
        name: "google",
        display_name: "Google Gemini",
        protocol: Protocol::Gemini,
        base_url: "https://generativelanguage.googleapis.com",
        // the google-genai SDKs' variable
        base_url_env: Some("GOOGLE_GEMINI_BASE_URL"),
        key_env: &["GOOGLE_API_KEY", "GEMINI_API_KEY"],
        default_model: "gemini-2.5-flash",
    },
    Known {
        name: "xai",
        display_name: "xAI Grok",
        protocol: Protocol::OpenAi,
        base_url: "https://api.x.ai/v1",
        base_url_env: None,
        key_env: &["XAI_API_KEY"],
        default_model: "grok-3-mini",
    },
    Known {
        name: "deepseek",
        display_name: "DeepSeek",
        protocol: Protocol::OpenAi,
        base_url: "https://api.deepseek.com/v1",
        base_url_env: None,
        key_env: &["DEEPSEEK_API_KEY"],
        default_model: "deepseek-chat",
    },
    Known {
        name: "openrouter",
        display_name: "OpenRouter",
        protocol: Protocol::OpenAi,
        base_url: "https://openrouter.ai/api/v1",
        base_url_env: None,
        key_env: &["OPENROUTER_API_KEY"],
        default_model: "openai/gpt-4o-mini",
    },
    // its clients name the server OLLAMA_HOST
    Known {
        name: "ollama",
        display_name: "Ollama",
        protocol: Protocol::Ollama,
        base_url: "http://127.0.0.1:11434",
        base_url_env: None,
        key_env: &[],
        default_model: "llama3.2",
    },
    Known {
        name: "mistral",
        display_name: "Mistral",
        protocol: Protocol::OpenAi,
        base_url: "https://api.mistral.ai/v1",
        base_url_env: None,
        key_env: &["MISTRAL_API_KEY"],
        default_model: "mistral-small-latest",
    },
    Known {
        name: "together",
        display_name: "Together AI",
        protocol: Protocol::OpenAi,
        base_url: "https://api.together.xyz/v1",
        base_url_env: Some("TOGETHER_BASE_URL"),
        key_env: &["TOGETHER_API_KEY"],
        default_model: "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    },
    Known {
        name: "fireworks",
        display_name: "Fireworks AI",
        protocol: Protocol::OpenAi,
        base_url: "https://api.fireworks.ai/inference/v1",
        base_url_env: None,
        key_env: &["FIREWORKS_API_KEY"],
        default_model: "accounts/fireworks/models/llama-v3p1-8b-instruct",
    },
    Known {
        name: "perplexity",
        display_name: "Perplexity",
        protocol: Protocol::OpenAi,
        base_url: "https://api.perplexity.ai",
        base_url_env: None,
        key_env: &["PERPLEXITY_API_KEY"],
        default_model: "sonar",
    },
    // Workers AI's OpenAI-compatible endpoint; `{account_id}` from the configuration or
    // CLOUDFLARE_ACCOUNT_ID
    Known {
        name: "cloudflare",
        display_name: "Cloudflare Workers AI",
        protocol: Protocol::OpenAi,
        base_url: "https://api.cloudflare.com/client/v4/accounts/{account_id}/ai/v1",
        base_url_env: None,
        key_env: &["CLOUDFLARE_API_KEY", "CLOUDFLARE_API_TOKEN"],
        default_model: "@cf/meta/llama-3.1-8b-instruct",
    },
    Known {
        name: "venice",
        display_name: "Venice AI",
        protocol: Protocol::OpenAi,
        base_url: "https://api.venice.ai/api/v1",
        base_url_env: None,
        key_env: &["VENICE_API_KEY"],
        default_model: "llama-3.3-70b",
    },
    Known {
        name: "cohere",
        display_name: "Cohere",
        protocol: Protocol::Cohere,
        base_url: "https://api.cohere.com",
        base_url_env: Some("CO_API_URL"),
        key_env: &["COHERE_API_KEY", "CO_API_KEY"],
        default_model: "command-r-plus",
    },
    Known {
        name: "bedrock",
        display_name: "AWS Bedrock",
        protocol: Protocol::Bedrock,
        base_url: "https://bedrock-runtime.{region}.amazonaws.com",
        base_url_env: None,
        // with AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN): SigV4; see `bedrock_credentials`
        key_env: &["AWS_ACCESS_KEY_ID"],
        default_model: "anthropic.claude-3-5-haiku-20241022-v1:0",
    },
];

/// A provider as this process reaches it.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub display_name: String,
    pub protocol: Protocol,
    /// without a trailing slash
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// AWS credentials to sign with (Bedrock); without them its `api_key` is a Bedrock
    /// API key, sent as a bearer token
    pub aws: Option<AwsCredentials>,
    /// a key is present, or the provider needs none
    pub configured: bool,
    pub enabled: bool,
    pub priority: u32,
    pub default_model: String,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Builds every provider: the catalogue's and the configuration's custom ones, with
/// `env` standing for the process environment.
pub fn build(config: &LlmConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Provider>, String> {
    let mut providers = Vec::new();
    let empty = LlmProviderConfig::default();
    for (rank, known) in KNOWN.iter().enumerate() {
        let overrides = config.providers.get(known.name).unwrap_or(&empty);
        let mut base_url = overrides
            .base_url
            .clone()
            .or_else(|| known.base_url_env.and_then(env).filter(|v| !v.is_empty()))
            .unwrap_or_else(|| known.base_url.to_owned());
        if known.name == "ollama"
            && overrides.base_url.is_none()
            && let Some(host) = env("OLLAMA_HOST").filter(|v| !v.is_empty())
        {
            let host = if host.contains("://") { host } else { format!("http://{host}") };
            base_url = host.trim_end_matches('/').to_owned();
        }
        if base_url.contains("{account_id}") {
            let account = overrides.account_id.clone().or_else(|| env("CLOUDFLARE_ACCOUNT_ID")).unwrap_or_default();
            base_url = base_url.replace("{account_id}", &account);
        }
        let region = aws_region(&base_url, env);
        base_url = base_url.replace("{region}", &region);
        let (api_key, aws) = match known.protocol {
            Protocol::Bedrock => bedrock_credentials(overrides, region, env),
            _ => (key(overrides, known.key_env, env), None),
        };
        let configured = known.key_env.is_empty() || api_key.is_some();
        providers.push(Provider {
            name: known.name.to_owned(),
            display_name: known.display_name.to_owned(),
            protocol: known.protocol,
            base_url: check_url(known.name, &base_url)?,
            api_key,
            aws,
            configured,
            // Ollama needs no key: only used when configured explicitly
            enabled: overrides.enabled.unwrap_or(known.name != "ollama" || config.providers.contains_key("ollama")),
            priority: overrides.priority.unwrap_or(rank as u32 * 10),
            default_model: overrides.default_model.clone().unwrap_or_else(|| known.default_model.to_owned()),
        });
    }
    for (name, custom) in &config.providers {
        if KNOWN.iter().any(|k| k.name == name) {
            continue;
        }
        if name.is_empty() || name.contains('/') {
            return Err(format!("llm provider name {name:?} must be non-empty and without '/'"));
        }
        let base_url =
            custom.base_url.clone().ok_or_else(|| format!("llm.providers.{name}: a custom provider needs base_url"))?;
        let protocol = match custom.protocol.as_deref() {
            None => Protocol::OpenAi,
            Some(text) => Protocol::parse(text).ok_or_else(|| {
                format!("llm.providers.{name}.protocol must be openai, anthropic, gemini, ollama, cohere or bedrock")
            })?,
        };
        let (api_key, aws) = match protocol {
            Protocol::Bedrock => bedrock_credentials(custom, aws_region(&base_url, env), env),
            _ => (key(custom, &[], env), None),
        };
        providers.push(Provider {
            name: name.clone(),
            display_name: name.clone(),
            protocol,
            base_url: check_url(name, &base_url)?,
            api_key,
            aws,
            configured: true,
            enabled: custom.enabled.unwrap_or(true),
            priority: custom.priority.unwrap_or(5),
            default_model: custom.default_model.clone().unwrap_or_default(),
        });
    }
    Ok(providers)
}

/// The variables that hold keys: every provider's `key_env`, Bedrock's secret and
/// session token, and the names `api_key_env` settings give.
pub fn key_names(config: &LlmConfig) -> Vec<String> {
    let mut names: Vec<String> = KNOWN.iter().flat_map(|k| k.key_env).map(|n| (*n).to_owned()).collect();
    names.extend(BEDROCK_SECRETS.iter().map(|n| (*n).to_owned()));
    names.extend(config.providers.values().filter_map(|p| p.api_key_env.clone()));
    names
}

/// Variables Bedrock reads besides its `key_env`.
const BEDROCK_SECRETS: [&str; 3] = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK"];

/// What [`build`] reads its variables through: a key ([`key_names`]) from `credentials`
/// (the environment, then the vault), anything else — base URLs, hosts, regions,
/// account ids — from `env` alone. Where a key is sent is never the vault's to say: a
/// base URL stored there would have the router hand the real key to whoever chose it.
pub fn lookup(
    config: &LlmConfig,
    credentials: &helix_vault::Credentials,
    env: impl Fn(&str) -> Option<String>,
) -> impl Fn(&str) -> Option<String> {
    let keys = key_names(config);
    let credentials = credentials.clone();
    move |name| match keys.iter().any(|k| k == name) {
        true => credentials.get(name).map(|v| secrecy::ExposeSecret::expose_secret(&v).to_owned()),
        false => env(name),
    }
}

fn key(overrides: &LlmProviderConfig, defaults: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Option<Secret> {
    if let Some(key) = &overrides.api_key {
        return Some(key.clone());
    }
    let named = overrides.api_key_env.as_deref().map(|n| vec![n]).unwrap_or_else(|| defaults.to_vec());
    named.into_iter().find_map(|name| env(name).filter(|v| !v.trim().is_empty())).map(Secret::new)
}

/// The region a Bedrock URL names (`bedrock-runtime.<region>.amazonaws.com`), else
/// AWS_REGION, AWS_DEFAULT_REGION, us-east-1: what requests are signed for.
fn aws_region(base_url: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let host = base_url.split("://").nth(1).unwrap_or_default().split(['/', ':']).next().unwrap_or_default();
    match host.strip_prefix("bedrock-runtime.").and_then(|rest| rest.strip_suffix(".amazonaws.com")) {
        Some(region) if !region.is_empty() && !region.contains('{') => region.to_owned(),
        _ => env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".into()),
    }
}

/// Bedrock's credentials: an access key id (`api_key`, the variable `api_key_env`
/// names, or AWS_ACCESS_KEY_ID) with AWS_SECRET_ACCESS_KEY signs with SigV4; without
/// the secret, the key (`api_key`, or AWS_BEARER_TOKEN_BEDROCK) is a Bedrock API key.
fn bedrock_credentials(
    overrides: &LlmProviderConfig,
    region: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<Secret>, Option<AwsCredentials>) {
    let secret = env("AWS_SECRET_ACCESS_KEY").filter(|v| !v.trim().is_empty());
    match (key(overrides, &["AWS_ACCESS_KEY_ID"], env), secret) {
        (Some(id), Some(secret)) => {
            let aws = AwsCredentials {
                access_key_id: id.expose().to_owned(),
                secret_access_key: Secret::new(secret),
                session_token: env("AWS_SESSION_TOKEN").filter(|v| !v.trim().is_empty()).map(Secret::new),
                region,
            };
            (Some(id), Some(aws))
        }
        _ => (key(overrides, &["AWS_BEARER_TOKEN_BEDROCK"], env), None),
    }
}

fn check_url(name: &str, url: &str) -> Result<String, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("llm provider {name}: base URL {url:?} must start with http:// or https://"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Providers by name, for lookups.
pub fn by_name(providers: &[Provider]) -> BTreeMap<String, usize> {
    providers.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn every_provider_of_the_seed_with_its_key_variable() {
        let seed = [
            ("anthropic", "ANTHROPIC_API_KEY"),
            ("openai", "OPENAI_API_KEY"),
            ("google", "GOOGLE_API_KEY"),
            ("xai", "XAI_API_KEY"),
            ("deepseek", "DEEPSEEK_API_KEY"),
            ("openrouter", "OPENROUTER_API_KEY"),
            ("mistral", "MISTRAL_API_KEY"),
            ("together", "TOGETHER_API_KEY"),
            ("fireworks", "FIREWORKS_API_KEY"),
            ("perplexity", "PERPLEXITY_API_KEY"),
            ("cloudflare", "CLOUDFLARE_API_KEY"),
            ("venice", "VENICE_API_KEY"),
            ("cohere", "COHERE_API_KEY"),
            ("bedrock", "AWS_BEARER_TOKEN_BEDROCK"),
        ];
        let none = build(&LlmConfig::default(), &env_of(&[])).unwrap();
        assert!(none.iter().filter(|p| p.name != "ollama").all(|p| !p.configured), "no key, not configured");
        assert!(none.iter().any(|p| p.name == "ollama"), "Ollama is listed too");
        for (name, variable) in seed {
            let providers = build(&LlmConfig::default(), &env_of(&[(variable, "k-123")])).unwrap();
            let provider = providers.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(provider.configured, "{name} takes its key from {variable}");
            assert_eq!(provider.api_key.as_ref().map(Secret::expose), Some("k-123"));
            assert!(!format!("{provider:?}").contains("k-123"), "{name}: the key never prints");
        }
        let bedrock = |vars: &[(&str, &str)]| {
            build(&LlmConfig::default(), &env_of(vars)).unwrap().into_iter().find(|p| p.name == "bedrock").unwrap()
        };
        let signed = bedrock(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s3cret"),
            ("AWS_SESSION_TOKEN", "tok"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        let aws = signed.aws.as_ref().expect("an id and a secret sign with SigV4");
        assert_eq!((aws.access_key_id.as_str(), aws.region.as_str()), ("AKID", "eu-west-1"));
        assert_eq!(aws.session_token.as_ref().map(Secret::expose), Some("tok"));
        assert!(signed.configured && !format!("{signed:?}").contains("s3cret"));
        let id_alone = bedrock(&[("AWS_ACCESS_KEY_ID", "AKID")]);
        assert!(!id_alone.configured && id_alone.aws.is_none(), "a key id without its secret signs nothing");
    }

    /// Every variable that holds a provider key is one `helix_vault::KNOWN` lists: the
    /// status route, `hx health` and `hx setup` know every key the router reads.
    #[test]
    fn every_key_variable_is_a_known_credential() {
        let known: Vec<&str> = helix_vault::KNOWN.iter().map(|k| k.name).collect();
        for name in key_names(&LlmConfig::default()) {
            assert!(known.contains(&name.as_str()), "{name} is read by the router but missing from helix_vault::KNOWN");
        }
    }

    /// Keys from the environment first, then the vault; where they are sent from the
    /// environment alone (a base URL in the vault is not read).
    #[test]
    fn keys_from_the_environment_then_the_vault_urls_never_from_the_vault() {
        let dir = tempfile::tempdir().unwrap();
        let vault = helix_vault::Vault::open(dir.path(), &Default::default()).unwrap();
        for (name, value) in [
            ("OPENAI_API_KEY", "sk-vault-openai"),
            ("ANTHROPIC_API_KEY", "sk-vault-anthropic"),
            ("OPENAI_BASE_URL", "http://attacker.example/v1"),
            ("AWS_ACCESS_KEY_ID", "AKIDVAULT"),
            ("AWS_SECRET_ACCESS_KEY", "vault-secret"),
        ] {
            vault.set(name, value.into()).unwrap();
        }
        let env = env_of(&[("ANTHROPIC_API_KEY", "sk-env-anthropic"), ("AWS_REGION", "eu-west-1")]);
        let credentials = helix_vault::Credentials::with_env(
            Some(std::sync::Arc::new(vault)),
            env_of(&[("ANTHROPIC_API_KEY", "sk-env-anthropic")]),
        );
        let config = LlmConfig::default();
        let providers = build(&config, &lookup(&config, &credentials, env)).unwrap();
        let provider = |name: &str| providers.iter().find(|p| p.name == name).unwrap();
        let openai = provider("openai");
        assert_eq!(openai.api_key.as_ref().map(Secret::expose), Some("sk-vault-openai"), "the vault's key");
        assert!(openai.configured);
        assert_eq!(openai.base_url, "https://api.openai.com/v1", "a base URL in the vault is not read");
        assert_eq!(
            provider("anthropic").api_key.as_ref().map(Secret::expose),
            Some("sk-env-anthropic"),
            "the environment wins"
        );
        let bedrock = provider("bedrock");
        let aws = bedrock.aws.as_ref().expect("SigV4 from the vault's id and secret");
        assert_eq!((aws.access_key_id.as_str(), aws.region.as_str()), ("AKIDVAULT", "eu-west-1"));
        assert!(!provider("mistral").configured);
    }

    #[test]
    fn base_url_from_configuration_then_sdk_variable_then_default() {
        let url = |config: &LlmConfig, vars: &[(&str, &str)], name: &str| {
            build(config, &env_of(vars)).unwrap().into_iter().find(|p| p.name == name).unwrap().base_url
        };
        let default = LlmConfig::default();
        assert_eq!(url(&default, &[], "openai"), "https://api.openai.com/v1");
        assert_eq!(url(&default, &[("OPENAI_BASE_URL", "http://proxy:1/v1/")], "openai"), "http://proxy:1/v1");
        assert_eq!(url(&default, &[("ANTHROPIC_BASE_URL", "http://a:2")], "anthropic"), "http://a:2");
        assert_eq!(url(&default, &[("OLLAMA_HOST", "gpu:11434")], "ollama"), "http://gpu:11434");
        assert_eq!(url(&default, &[("CO_API_URL", "http://co:4/")], "cohere"), "http://co:4");
        assert_eq!(url(&default, &[], "google"), "https://generativelanguage.googleapis.com");
        assert_eq!(
            url(&default, &[("CLOUDFLARE_ACCOUNT_ID", "acc1")], "cloudflare"),
            "https://api.cloudflare.com/client/v4/accounts/acc1/ai/v1"
        );
        assert_eq!(
            url(&default, &[("AWS_REGION", "eu-west-1")], "bedrock"),
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
        // the region a configured Bedrock URL names is the one requests are signed for
        assert_eq!(aws_region("https://bedrock-runtime.ap-south-1.amazonaws.com", &env_of(&[])), "ap-south-1");
        assert_eq!(aws_region("http://127.0.0.1:9/", &env_of(&[("AWS_DEFAULT_REGION", "us-west-2")])), "us-west-2");
        let mut config = LlmConfig::default();
        config.providers.insert(
            "openai".into(),
            LlmProviderConfig { base_url: Some("http://configured:3/v1".into()), ..Default::default() },
        );
        assert_eq!(url(&config, &[("OPENAI_BASE_URL", "http://proxy:1/v1")], "openai"), "http://configured:3/v1");

        config.providers.insert("lab".into(), LlmProviderConfig::default());
        assert!(build(&config, &env_of(&[])).unwrap_err().contains("needs base_url"));
        config.providers.insert(
            "lab".into(),
            LlmProviderConfig {
                base_url: Some("http://lab:8000/v1".into()),
                protocol: Some("anthropic".into()),
                api_key_env: Some("LAB_KEY".into()),
                ..Default::default()
            },
        );
        let lab =
            build(&config, &env_of(&[("LAB_KEY", "lab-key")])).unwrap().into_iter().find(|p| p.name == "lab").unwrap();
        assert_eq!((lab.protocol, lab.api_key.as_ref().map(Secret::expose)), (Protocol::Anthropic, Some("lab-key")));
    }
}
