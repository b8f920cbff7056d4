//! The pricing table: USD per million tokens per model (input, output, cached input,
//! reasoning), each figure with its effective date and source, from `pricing.toml`
//! (built in) or `llm.pricing_file`. Money is integer micro-dollars everywhere else;
//! prices are kept as pico-dollars per token (1 USD per 1M tokens = 1 µ$ per token =
//! 1 000 000 p$ per token) so that sub-cent prices stay exact.
//!
//! Checked at load, so that a figure in the wrong unit cannot slip through: every
//! price is finite and within 0..=1000 USD per 1M tokens; a non-zero price below
//! 0.001 is refused (a per-token or per-1K figure typed into a per-1M column); cached
//! input costs no more than input; ids are `provider/model` (a `provider/*` row prices
//! every model of a provider, e.g. local Ollama at 0) and unique; every row has an
//! effective date (YYYY-MM-DD) and a source.

use std::collections::HashMap;

use serde::Deserialize;

pub const BUILT_IN: &str = include_str!("../pricing.toml");

/// Output tokens assumed when a call sets no `max_tokens` and the table gives none.
const DEFAULT_MAX_OUTPUT: u32 = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: String,
    #[serde(default, rename = "model")]
    models: Vec<Row>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    id: String,
    input: f64,
    output: f64,
    cached_input: Option<f64>,
    reasoning: Option<f64>,
    /// the largest answer the model gives; bounds the worst-case cost of a call
    max_output_tokens: Option<u32>,
    /// small, medium or large: what a downgrade moves between
    tier: Option<String>,
    effective: String,
    source: String,
}

#[derive(Debug, Clone)]
pub struct Price {
    pub id: String,
    /// pico-dollars per token
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub reasoning: u64,
    pub max_output_tokens: u32,
    pub tier: String,
    pub effective: String,
    pub source: String,
}

impl Price {
    /// USD per million tokens, for display
    pub fn input_per_mtok(&self) -> f64 {
        self.input as f64 / 1e6
    }

    pub fn output_per_mtok(&self) -> f64 {
        self.output as f64 / 1e6
    }

    /// The cost of a call in micro-dollars, rounded up: cached prompt tokens at the
    /// cached price, reasoning tokens (part of the completion) at the reasoning price.
    pub fn cost_micros(&self, usage: &crate::types::Usage) -> i64 {
        let cached = usage.cached_prompt_tokens.min(usage.prompt_tokens);
        let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
        let pico = u128::from(usage.prompt_tokens - cached) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(usage.completion_tokens - reasoning) * u128::from(self.output)
            + u128::from(reasoning) * u128::from(self.reasoning);
        i64::try_from(pico.div_ceil(1_000_000)).unwrap_or(i64::MAX)
    }

    /// The most a call can cost: its prompt (estimated) and all the output it may ask for.
    pub fn worst_case_micros(&self, prompt_tokens: u64, max_tokens: Option<u32>) -> i64 {
        let output = u64::from(max_tokens.unwrap_or(self.max_output_tokens));
        let pico = u128::from(prompt_tokens) * u128::from(self.input)
            + u128::from(output) * u128::from(self.output.max(self.reasoning));
        i64::try_from(pico.div_ceil(1_000_000)).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Pricing {
    pub version: String,
    exact: HashMap<String, Price>,
    /// `provider/*` rows
    wildcard: HashMap<String, Price>,
}

impl Pricing {
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| format!("pricing table: {e}"))?;
        let mut pricing = Pricing { version: file.version, ..Default::default() };
        for row in file.models {
            let price = check(row)?;
            let (provider, model) = price.id.split_once('/').expect("checked");
            let table = if model == "*" { &mut pricing.wildcard } else { &mut pricing.exact };
            let key = if model == "*" { provider.to_owned() } else { price.id.clone() };
            if table.insert(key, price.clone()).is_some() {
                return Err(format!("pricing table: {} is priced twice", price.id));
            }
        }
        Ok(pricing)
    }

    pub fn get(&self, provider: &str, model: &str) -> Option<&Price> {
        self.exact.get(&format!("{provider}/{model}")).or_else(|| self.wildcard.get(provider))
    }

    /// The priced chat models of `provider` (embedding models, which give no output,
    /// left out), cheapest first by input + output price.
    pub fn cheapest_of(&self, provider: &str) -> Vec<(&str, &Price)> {
        let prefix = format!("{provider}/");
        let mut models: Vec<_> = self
            .exact
            .iter()
            .filter(|(_, price)| price.max_output_tokens > 0)
            .filter_map(|(id, price)| id.strip_prefix(&prefix).map(|model| (model, price)))
            .collect();
        models.sort_by_key(|(model, p)| (p.input + p.output, model.to_string()));
        models
    }

    /// Providers that price `model` (a bare model name).
    pub fn providers_of(&self, model: &str) -> Vec<&str> {
        let mut found: Vec<&str> = self
            .exact
            .keys()
            .filter_map(|id| id.split_once('/'))
            .filter(|(_, m)| *m == model)
            .map(|(p, _)| p)
            .collect();
        found.sort_unstable();
        found
    }

    pub fn models(&self) -> impl Iterator<Item = &Price> {
        self.exact.values()
    }
}

fn check(row: Row) -> Result<Price, String> {
    let id = &row.id;
    let Some((provider, model)) = id.split_once('/') else {
        return Err(format!("pricing table: {id:?} must be provider/model"));
    };
    if provider.is_empty() || model.is_empty() {
        return Err(format!("pricing table: {id:?} must be provider/model"));
    }
    if chrono::NaiveDate::parse_from_str(&row.effective, "%Y-%m-%d").is_err() {
        return Err(format!("pricing table: {id}: effective must be a date YYYY-MM-DD, not {:?}", row.effective));
    }
    if row.source.trim().is_empty() {
        return Err(format!("pricing table: {id}: every price needs its source"));
    }
    let pico = |what: &str, usd_per_mtok: f64| -> Result<u64, String> {
        if !(usd_per_mtok.is_finite() && (0.0..=1000.0).contains(&usd_per_mtok)) {
            return Err(format!(
                "pricing table: {id}: {what} = {usd_per_mtok} is not within 0..=1000 USD per 1M tokens"
            ));
        }
        if usd_per_mtok > 0.0 && usd_per_mtok < 0.001 {
            return Err(format!(
                "pricing table: {id}: {what} = {usd_per_mtok} USD per 1M tokens is implausibly small; \
                 prices are per million tokens, not per token or per thousand"
            ));
        }
        Ok((usd_per_mtok * 1e6).round() as u64)
    };
    let input = pico("input", row.input)?;
    let output = pico("output", row.output)?;
    let cached_input = pico("cached_input", row.cached_input.unwrap_or(row.input))?;
    let reasoning = pico("reasoning", row.reasoning.unwrap_or(row.output))?;
    if cached_input > input {
        return Err(format!("pricing table: {id}: cached_input costs more than input"));
    }
    let tier = row.tier.unwrap_or_else(|| "medium".to_owned());
    if !matches!(tier.as_str(), "small" | "medium" | "large") {
        return Err(format!("pricing table: {id}: tier must be small, medium or large"));
    }
    Ok(Price {
        id: row.id,
        input,
        output,
        cached_input,
        reasoning,
        max_output_tokens: row.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT),
        tier,
        effective: row.effective,
        source: row.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Usage;

    #[test]
    fn the_built_in_table_loads() {
        let pricing = Pricing::parse(BUILT_IN).unwrap();
        let mini = pricing.get("openai", "gpt-4o-mini").unwrap();
        assert_eq!((mini.input, mini.output, mini.cached_input), (150_000, 600_000, 75_000));
        assert!(pricing.get("ollama", "anything").is_some(), "local models are priced, at 0");
        assert!(pricing.get("openai", "no-such-model").is_none());
    }

    #[test]
    fn costs_are_exact_micro_dollars_rounded_up() {
        let pricing = Pricing::parse(BUILT_IN).unwrap();
        let mini = pricing.get("openai", "gpt-4o-mini").unwrap();
        // 1M input at 0.15 + 1M output at 0.60 = 0.75 USD
        let usage = Usage { prompt_tokens: 1_000_000, completion_tokens: 1_000_000, ..Usage::default() };
        assert_eq!(mini.cost_micros(&usage), 750_000);
        // half the prompt cached: 0.075 + 0.0375 + 0.6
        let cached = Usage { cached_prompt_tokens: 500_000, ..usage };
        assert_eq!(mini.cost_micros(&cached), 712_500);
        // one token still costs something: never counted as free
        assert_eq!(mini.cost_micros(&Usage { prompt_tokens: 1, ..Usage::default() }), 1);
    }

    #[test]
    fn figures_in_the_wrong_unit_are_refused() {
        let row = |input: &str, extra: &str| {
            format!(
                "version = \"t\"\n[[model]]\nid = \"p/m\"\ninput = {input}\noutput = 1.0\neffective = \"2025-01-01\"\nsource = \"s\"\n{extra}"
            )
        };
        assert!(Pricing::parse(&row("0.5", "")).is_ok());
        for (input, extra, expected) in [
            ("0.00000015", "", "implausibly small"),
            ("2500", "", "within 0..=1000"),
            ("-1", "", "within 0..=1000"),
            ("0.5", "cached_input = 0.9", "cached_input costs more"),
        ] {
            let error = Pricing::parse(&row(input, extra)).unwrap_err();
            assert!(error.contains(expected), "{input} {extra}: {error}");
        }
        let no_source = "version = \"t\"\n[[model]]\nid = \"p/m\"\ninput = 1\noutput = 1\neffective = \"2025-01-01\"\nsource = \"\"";
        assert!(Pricing::parse(no_source).unwrap_err().contains("source"));
    }
}
