//! Sentence embeddings for the search service, behind one trait.
//!
//! - [`MiniLm`]: all-MiniLM-L6-v2 run in-process on the CPU (candle), loaded from a local
//!   directory (`make model` fetches it). Never from a model hub.
//! - [`OpenAiEmbedder`]: an OpenAI-compatible `POST {url}/embeddings` endpoint.
//! - [`LexicalHashEmbedder`]: the zero-download fallback; hashed words, no semantics.
//!
//! [`from_config`] picks one. Every implementation returns L2-normalised vectors (so cosine
//! similarity is a dot product), splits large inputs into batches itself and keeps
//! CPU-bound work off the async executor.

mod bert;
mod error;
mod lexical;
mod minilm;
mod openai;
mod select;

use async_trait::async_trait;
use serde::Serialize;

pub use error::{EmbedError, Result};
pub use lexical::LexicalHashEmbedder;
pub use minilm::MiniLm;
pub use openai::{OpenAiConfig, OpenAiEmbedder};
pub use select::{DEFAULT_MODEL_DIR, EmbedConfig, from_config, from_config_with_env};

/// Turns texts into vectors of one space: same embedder (name and dim), comparable vectors.
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// What this embedder is; `name` and `dim` identify its vector space, so an index built
    /// with one name must be rebuilt when the name changes.
    fn info(&self) -> EmbedderInfo;

    /// One L2-normalised vector per text, in the order of `texts`. Any number of texts: the
    /// implementation batches internally.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmbedderInfo {
    /// `all-MiniLM-L6-v2`, `lexical-hash-v1`, `openai:<model>`.
    pub name: String,
    pub dim: usize,
    pub kind: EmbedderKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderKind {
    /// A language model: similar meaning, similar vector.
    Semantic,
    /// Shared words only (the fallback when no model is available).
    Lexical,
}

/// Scales `v` to unit length in place; a zero vector stays zero.
fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Runs CPU-bound work on tokio's blocking pool, off the async executor.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| EmbedError::Task(e.to_string()))?
}

#[cfg(test)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
fn norm(v: &[f32]) -> f32 {
    dot(v, v).sqrt()
}

#[cfg(test)]
fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| t.to_string()).collect()
}
