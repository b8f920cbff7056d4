//! The BERT encoder a sentence-transformers model such as all-MiniLM-L6-v2 is made of,
//! on candle's tensors: embeddings, then self-attention and feed-forward layers, each
//! followed by a residual and a layer norm (post-norm, as in the original BERT).
//!
//! Ours rather than candle-transformers' because that crate compiles every model it has
//! (about 150 CPU-seconds of a fresh build on two cores, decisions 0012) for the one we
//! use, and because owning the forward pass lets it be tuned for this model: query, key
//! and value are one matrix product.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use serde::Deserialize;

/// The fields of a Hugging Face `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn gelu() -> String {
    "gelu".to_owned()
}

fn absolute() -> String {
    "absolute".to_owned()
}

impl Config {
    /// What this encoder does not implement is refused at load, not computed wrongly.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!("hidden_act {:?} is not supported (only gelu)", self.hidden_act));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only absolute)",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} does not split into {} attention heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

pub struct Bert {
    words: Embedding,
    positions: Embedding,
    /// every token is of type 0: its row, added to all
    token_type: Tensor,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
}

struct Layer {
    /// query, key and value stacked: one product instead of three
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

impl Bert {
    /// Reads the weights under Hugging Face's names (`embeddings.*`, `encoder.layer.N.*`).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let hidden = config.hidden_size;
        let eps = config.layer_norm_eps;
        let vb_embeddings = vb.pp("embeddings");
        let token_types = embedding(config.type_vocab_size, hidden, vb_embeddings.pp("token_type_embeddings"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("encoder.layer.{i}"));
                let attention = vb.pp("attention");
                let part = |name: &str| linear(hidden, hidden, attention.pp("self").pp(name));
                let (query, key, value) = (part("query")?, part("key")?, part("value")?);
                let weight = Tensor::cat(&[query.weight(), key.weight(), value.weight()], 0)?;
                let bias = [&query, &key, &value].map(|l| l.bias().cloned());
                let bias = match bias {
                    [Some(q), Some(k), Some(v)] => Some(Tensor::cat(&[q, k, v], 0)?),
                    _ => None,
                };
                Ok(Layer {
                    qkv: Linear::new(weight, bias),
                    attention_out: linear(hidden, hidden, attention.pp("output.dense"))?,
                    attention_norm: layer_norm(hidden, eps, attention.pp("output.LayerNorm"))?,
                    intermediate: linear(hidden, config.intermediate_size, vb.pp("intermediate.dense"))?,
                    out: linear(config.intermediate_size, hidden, vb.pp("output.dense"))?,
                    out_norm: layer_norm(hidden, eps, vb.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            words: embedding(config.vocab_size, hidden, vb_embeddings.pp("word_embeddings"))?,
            positions: embedding(config.max_position_embeddings, hidden, vb_embeddings.pp("position_embeddings"))?,
            token_type: token_types.embeddings().get(0)?,
            norm: layer_norm(hidden, eps, vb_embeddings.pp("LayerNorm"))?,
            layers,
            heads: config.num_attention_heads,
        })
    }

    /// The last layer's token vectors, `(batch, len, hidden)`, for token ids and an
    /// attention mask (1 for a real token, 0 for padding) of shape `(batch, len)`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let x = self
            .words
            .forward(ids)?
            .broadcast_add(&self.positions.forward(&positions)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.norm.forward(&x)?;
        // padding gets a large negative score before the softmax: no weight at all
        let bias = ((mask.to_dtype(DType::F32)?.affine(1.0, -1.0)?) * 1e4)?.reshape((batch, 1, 1, len))?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, self.heads)?;
        }
        Ok(x)
    }
}

impl Layer {
    fn forward(&self, x: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
        let (batch, len, hidden) = x.dims3()?;
        let head_dim = hidden / heads;
        // (batch, len, 3·hidden) → three of (batch, heads, len, head_dim)
        let qkv = self.qkv.forward(x)?.reshape((batch, len, 3, heads, head_dim))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?.broadcast_add(bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((batch, len, hidden))?;
        let x = self.attention_norm.forward(&(self.attention_out.forward(&context)? + x)?)?;
        let inner = self.intermediate.forward(&x)?.gelu_erf()?;
        self.out_norm.forward(&(self.out.forward(&inner)? + x)?)
    }
}

/// Mean of the token vectors under the mask, `(batch, hidden)`: sentence-transformers'
/// pooling for this model.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (batch, len, 1)
    let sum = hidden.broadcast_mul(&mask)?.sum(1)?; // (batch, hidden)
    let count = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (batch, 1)
    sum.broadcast_div(&count)
}
