//! Which embedder a process uses: an explicitly configured OpenAI-compatible endpoint,
//! else the local MiniLM when its weights are there, else lexical hashing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::minilm::WEIGHTS;
use crate::{EmbedError, Embedder, EmbedderKind, LexicalHashEmbedder, MiniLm, OpenAiConfig, OpenAiEmbedder, Result};

/// Where the local model is looked for, under the Helix home, when `model_dir` is unset.
pub const DEFAULT_MODEL_DIR: &str = "models/all-minilm-l6-v2";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedConfig {
    /// Directory of model.safetensors, config.json and tokenizer.json. Unset: the
    /// `DEFAULT_MODEL_DIR` under the home, used when present; a directory named here must
    /// hold the model.
    pub model_dir: Option<PathBuf>,
    /// An OpenAI-compatible endpoint; when set it is used instead of the local model.
    pub openai: Option<OpenAiConfig>,
}

/// The embedder `config` asks for; `home` is the Helix home (`HELIX_HOME`). Reads the API
/// key from the process environment.
pub async fn from_config(config: &EmbedConfig, home: &Path) -> Result<Arc<dyn Embedder>> {
    from_config_with_env(config, home, |name| std::env::var(name).ok()).await
}

/// [`from_config`] with `env` standing in for the process environment.
///
/// Errors rather than falling back when the configuration names something that is not
/// there: an explicit `model_dir` without weights, an unset key variable, an endpoint that
/// fails the dimension probe (sent only when `openai.dim` is unset).
pub async fn from_config_with_env(
    config: &EmbedConfig,
    home: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Embedder>> {
    let embedder: Arc<dyn Embedder> = if let Some(openai) = &config.openai {
        let key = match &openai.api_key_env {
            Some(name) => Some(env(name).filter(|k| !k.is_empty()).ok_or_else(|| {
                EmbedError::Config(format!("the API key variable {name} (openai.api_key_env) is not set"))
            })?),
            None => None,
        };
        let embedder = OpenAiEmbedder::new(openai, key)?;
        if embedder.dim().is_none() {
            embedder.embed(&["dimension probe".to_owned()]).await?;
        }
        Arc::new(embedder)
    } else {
        let dir = config.model_dir.clone().unwrap_or_else(|| home.join(DEFAULT_MODEL_DIR));
        if dir.join(WEIGHTS).is_file() {
            let load = dir.clone();
            let model = tokio::task::spawn_blocking(move || MiniLm::load(&load))
                .await
                .map_err(|e| EmbedError::Task(e.to_string()))??;
            Arc::new(model)
        } else if config.model_dir.is_some() {
            return Err(EmbedError::Config(format!(
                "model_dir {} has no {WEIGHTS} (`hx model fetch` puts the model under HELIX_HOME/models, \
                 `make model` under models/ of a checkout; or unset model_dir)",
                dir.display()
            )));
        } else {
            tracing::warn!(
                looked_in = %dir.display(),
                "no semantic model, so search embeds with lexical hashing (words, not meaning). To get the model: \
                 `hx model fetch` (into HELIX_HOME/models, found there at the next start), or `make model` in a \
                 checkout and HELIX_MODEL_DIR=models/all-minilm-l6-v2"
            );
            Arc::new(LexicalHashEmbedder::default())
        }
    };
    let info = embedder.info();
    if info.kind == EmbedderKind::Semantic {
        tracing::info!(name = %info.name, dim = info.dim, "embedder ready");
    }
    Ok(embedder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::tests::{DIM, KEY, spawn_fake};
    use crate::{EmbedderInfo, strings};

    #[tokio::test]
    async fn picks_openai_then_the_local_model_then_lexical_hashing() {
        let home = tempfile::tempdir().unwrap();
        let fake = spawn_fake().await;
        let env = |name: &str| (name == "TEST_EMBED_KEY").then(|| KEY.to_owned());
        let openai =
            OpenAiConfig { api_key_env: Some("TEST_EMBED_KEY".into()), ..OpenAiConfig::new(&fake.url, "small") };
        let model_dir = crate::minilm::tests::model_dir();

        let check = async |config: EmbedConfig, expected: EmbedderInfo| {
            let embedder = from_config_with_env(&config, home.path(), env).await.unwrap();
            assert_eq!(embedder.info(), expected, "{config:?}");
            let v = embedder.embed(&strings(&["what a process embeds with"])).await.unwrap();
            assert_eq!(v[0].len(), expected.dim);
        };
        // the endpoint wins over a model directory; its dimension is probed
        let config = EmbedConfig { model_dir: Some(model_dir.clone()), openai: Some(openai.clone()) };
        check(config, EmbedderInfo { name: "openai:small".into(), dim: DIM, kind: EmbedderKind::Semantic }).await;
        assert_eq!(fake.batches.lock().unwrap().len(), 2, "one probe, one request");
        let config = EmbedConfig { model_dir: Some(model_dir), openai: None };
        check(config, EmbedderInfo { name: "all-MiniLM-L6-v2".into(), dim: 384, kind: EmbedderKind::Semantic }).await;
        // nothing under the home's models/: the fallback
        let expected = EmbedderInfo { name: "lexical-hash-v1".into(), dim: 384, kind: EmbedderKind::Lexical };
        check(EmbedConfig::default(), expected).await;
    }

    #[tokio::test]
    async fn refuses_what_is_named_but_missing() {
        let home = tempfile::tempdir().unwrap();
        let no_env = |_: &str| None;
        let config = EmbedConfig { model_dir: Some(home.path().join("nowhere")), openai: None };
        let err = from_config_with_env(&config, home.path(), no_env).await.err().unwrap();
        assert!(matches!(&err, EmbedError::Config(m) if m.contains("make model")), "{err}");

        let openai =
            OpenAiConfig { api_key_env: Some("UNSET_KEY".into()), ..OpenAiConfig::new("http://127.0.0.1:1/v1", "m") };
        let config = EmbedConfig { model_dir: None, openai: Some(openai) };
        let err = from_config_with_env(&config, home.path(), no_env).await.err().unwrap();
        assert!(matches!(&err, EmbedError::Config(m) if m.contains("UNSET_KEY")), "{err}");
    }

    #[test]
    fn config_reads_from_a_file_shape() {
        let json = r#"{"openai": {"url": "https://api.openai.com/v1", "model": "text-embedding-3-small",
                        "api_key_env": "OPENAI_API_KEY", "dim": 1536}}"#;
        let config: EmbedConfig = serde_json::from_str(json).unwrap();
        let openai = config.openai.unwrap();
        assert_eq!((openai.dim, openai.timeout_secs, openai.batch_size), (Some(1536), 30, 64));
        assert!(serde_json::from_str::<EmbedConfig>(r#"{"modeldir": "x"}"#).is_err(), "unknown fields are refused");
        assert_eq!(serde_json::from_str::<EmbedConfig>("{}").unwrap(), EmbedConfig::default());
    }
}
