//! The zero-download fallback: feature hashing of words, word pairs and character
//! trigrams. Texts that share words get similar vectors; synonyms do not. Stable across
//! platforms and releases (its own hash function), so stored vectors stay valid.

use async_trait::async_trait;

use crate::{Embedder, EmbedderInfo, EmbedderKind, Result, blocking, normalize};

/// Bump when the features or the hash change: the name tells an index its vectors are stale.
const NAME: &str = "lexical-hash-v1";
const DEFAULT_DIM: usize = 384;

/// Weights of the feature families. Unigrams dominate; pairs reward shared phrases;
/// character trigrams give partial credit to inflections (`index`, `indexing`).
const UNIGRAM: f32 = 1.0;
const BIGRAM: f32 = 0.7;
const TRIGRAM: f32 = 0.3;

#[derive(Debug, Clone)]
pub struct LexicalHashEmbedder {
    dim: usize,
}

impl Default for LexicalHashEmbedder {
    fn default() -> Self {
        Self::new(DEFAULT_DIM)
    }
}

impl LexicalHashEmbedder {
    /// # Panics
    /// When `dim` is 0.
    pub fn new(dim: usize) -> Self {
        assert!(dim > 0, "a lexical hashing embedder needs at least one dimension");
        Self { dim }
    }

    /// The vector of one text; a text without a single word gets the zero vector.
    pub fn embed_text(&self, text: &str) -> Vec<f32> {
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
        // every feature occurrence counted in an open-addressing table keyed by the hash
        // itself (already well mixed): a hash map of the features and a string per
        // trigram cost several times the hashing, and sorting them to count did too
        // distinct features: a unigram and a bigram per word, a trigram per byte at most
        let mut counts = FeatureCounts::with_room(2 * words.len() + lower.len());
        let mut padded = String::new();
        let mut bounds: Vec<usize> = Vec::new();
        for (i, word) in words.iter().enumerate() {
            counts.add(hash(b'w', &[word]), UNIGRAM);
            if let Some(next) = words.get(i + 1) {
                counts.add(hash(b'b', &[word, " ", next]), BIGRAM);
            }
            padded.clear();
            padded.push('<');
            padded.push_str(word);
            padded.push('>');
            bounds.clear();
            bounds.extend(padded.char_indices().map(|(at, _)| at));
            bounds.push(padded.len());
            // words of one or two letters are covered by their unigram already
            if bounds.len() - 1 > 4 {
                for window in bounds.windows(4) {
                    counts.add(hash(b't', &[&padded[window[0]..window[3]]]), TRIGRAM);
                }
            }
        }
        // term frequency per hashed feature, then sublinear tf (1 + ln tf) per feature
        let mut v = vec![0.0; self.dim];
        for &(hash, weight, count) in counts.features() {
            let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
            v[(hash % self.dim as u64) as usize] += sign * weight * (1.0 + (count as f32).ln());
        }
        normalize(&mut v);
        v
    }
}

#[async_trait]
impl Embedder for LexicalHashEmbedder {
    fn info(&self) -> EmbedderInfo {
        EmbedderInfo { name: NAME.to_owned(), dim: self.dim, kind: EmbedderKind::Lexical }
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let (this, texts) = (self.clone(), texts.to_vec());
        blocking(move || Ok(texts.iter().map(|t| this.embed_text(t)).collect())).await
    }
}

/// How often each hashed feature occurs, with its family's weight: linear probing over
/// a power-of-two table at most half full.
struct FeatureCounts {
    /// (hash, weight, count); count 0 marks a free slot
    slots: Vec<(u64, f32, u32)>,
    mask: usize,
}

impl FeatureCounts {
    /// A table for at most `features` distinct features.
    fn with_room(features: usize) -> Self {
        let size = (2 * features).next_power_of_two().max(16);
        Self { slots: vec![(0, 0.0, 0); size], mask: size - 1 }
    }

    fn add(&mut self, hash: u64, weight: f32) {
        let mut at = hash as usize & self.mask;
        loop {
            let slot = &mut self.slots[at];
            if slot.2 == 0 {
                *slot = (hash, weight, 1);
                return;
            }
            if slot.0 == hash {
                slot.2 += 1;
                return;
            }
            at = (at + 1) & self.mask;
        }
    }

    fn features(&self) -> impl Iterator<Item = &(u64, f32, u32)> {
        self.slots.iter().filter(|slot| slot.2 > 0)
    }
}

/// FNV-1a over a family tag and the parts, then a 64-bit finaliser (MurmurHash3's) so the
/// low bits used for the bucket and the top bit used for the sign are well mixed.
fn hash(family: u8, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in std::iter::once(family).chain(parts.iter().flat_map(|p| p.bytes())) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dot, norm, strings};

    #[tokio::test]
    async fn vectors_are_unit_length_deterministic_and_batch_independent() {
        let e = LexicalHashEmbedder::default();
        assert_eq!(e.info(), EmbedderInfo { name: NAME.into(), dim: 384, kind: EmbedderKind::Lexical });
        let texts = strings(&["Graph databases store edges", "tantivy indexes text", "x", "Ünïcode wörds"]);
        let batch = e.embed(&texts).await.unwrap();
        assert_eq!(batch.len(), texts.len());
        for (text, v) in texts.iter().zip(&batch) {
            assert_eq!(v.len(), 384);
            assert!((norm(v) - 1.0).abs() < 1e-5, "{text:?}: norm {}", norm(v));
            assert_eq!(v, &e.embed_text(text), "batch and single differ for {text:?}");
            assert_eq!(v, &LexicalHashEmbedder::default().embed_text(text), "not deterministic");
        }
        // pinned so a change of hash or features (which invalidates stored vectors) is seen
        let first = &batch[0];
        let nonzero = first.iter().filter(|x| **x != 0.0).count();
        assert!((15..=30).contains(&nonzero), "{nonzero} non-zero buckets");
        assert_ne!(hash(b'w', &["graph"]), hash(b'b', &["graph"]));
        assert_eq!(hash(b'w', &["graph"]), 0x56ac_4edf_a03a_d219, "hash changed: rename to lexical-hash-v2");
    }

    #[test]
    fn shared_words_score_higher() {
        let e = LexicalHashEmbedder::default();
        let sim = |a: &str, b: &str| dot(&e.embed_text(a), &e.embed_text(b));
        let query = "rust async runtime";
        let related = sim(query, "tokio is an async runtime for Rust");
        let unrelated = sim(query, "a recipe for lemon cake with butter");
        assert!(related > 0.3 && unrelated.abs() < 0.15, "related {related}, unrelated {unrelated}");
        // case and punctuation do not matter; inflections get partial credit
        assert!((sim("Hello, World!", "hello world") - 1.0).abs() < 1e-5);
        assert!(sim("indexing documents", "index document") > sim("indexing documents", "graph edges"));
    }

    #[test]
    fn a_text_without_words_is_the_zero_vector() {
        let e = LexicalHashEmbedder::new(8);
        assert_eq!(e.embed_text(" ,;! "), vec![0.0; 8]);
        assert_eq!(e.embed_text("").len(), 8);
    }
}
