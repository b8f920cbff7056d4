//! Workflow definitions: the model (TOML or JSON through serde), validation with
//! errors that name what is wrong, and the plan (waves: topological levels).
//!
//! ```toml
//! name = "digest"
//! [variables]
//! topics = ["rust", "sql"]
//!
//! [[steps]]
//! id = "save"
//! action = "store"
//! for_each = "{{var.topics}}"
//! config = { title = "note on {{loop.item}}" }
//! gate = { kind = "regex", field = "0.title", pattern = "^note" }
//! ```
//!
//! Two limits apply to each run when set (scheduler workflows set them from their
//! `deadline` and `budget`): `deadline`, an RFC 3339 time as a string, and `budget_usd`,
//! what its LLM calls may cost. See [`Definition`].

use std::collections::{BTreeMap, HashMap, HashSet};

use helix_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::expr::{self, Condition, Path};

/// The actions a step may take.
pub const ACTIONS: &[&str] = &["wait", "set", "http", "store", "search", "job", "llm.generate", "notify", "workflow"];
/// The bound of a `while` loop when `max_iterations` is not given, and the highest one allowed.
pub const DEFAULT_MAX_ITERATIONS: u32 = 10;
pub const MAX_ITERATIONS: u32 = 1000;
pub const MAX_STEPS: usize = 500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// declared input variables with their defaults
    #[serde(default)]
    pub variables: Map<String, Value>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub steps: Vec<Step>,
    /// when every run must have ended (RFC 3339): at it, running steps stop and the run
    /// fails naming the steps left unfinished; a run started later fails at once
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// USD each run may spend on LLM calls (`llm.generate` steps, `llm_judge` gates): each
    /// call is capped at what is left, so the router downgrades or refuses it as the
    /// budget action says; once it is spent, no further step starts and the run fails
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// a condition; the step is skipped when it is false
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// run the action once per element of this list (a template yielding an array, or an array)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Value>,
    /// run the action again while this condition holds, at most `max_iterations` times
    #[serde(default, rename = "while", skip_serializing_if = "Option::is_none")]
    pub while_condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<u32>,
    /// a label: steps whose dependencies are done always run in parallel
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parallel_group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// the action's settings; strings are interpolated
    #[serde(default)]
    pub config: Map<String, Value>,
    /// the check the output must pass before dependants run
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// attempts in all, the first included (1 = no retry)
    pub attempts: u32,
    /// the wait before the second attempt; doubled after each further failure
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
}

fn default_backoff() -> u64 {
    500
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Gate {
    /// the value at `field` (the whole output when empty) is valid under a JSON Schema
    /// subset: type, properties, required, items, enum, minimum, maximum, minLength,
    /// maxLength, minItems, maxItems
    JsonSchema {
        #[serde(default)]
        field: String,
        schema: Value,
    },
    /// the value at `field`, as text, matches the pattern
    Regex {
        #[serde(default)]
        field: String,
        pattern: String,
    },
    /// the number at `field` lies within [min, max]
    Threshold {
        field: String,
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
    },
    /// the LLM router scores the output 0.0..=1.0 against `criteria`; passes at `threshold`
    LlmJudge {
        criteria: String,
        #[serde(default = "default_threshold")]
        threshold: f64,
        #[serde(default)]
        model: String,
    },
}

fn default_threshold() -> f64 {
    0.7
}

impl Step {
    pub fn attempts(&self) -> u32 {
        self.retry.map_or(1, |r| r.attempts.max(1))
    }

    pub fn display_name(&self) -> &str {
        if self.name.is_empty() { &self.id } else { &self.name }
    }
}

/// Parses `text` as `format` (`toml` or `json`; empty guesses from the first character).
pub fn parse(format: &str, text: &str) -> Result<(String, Definition)> {
    let format = match format.trim().to_ascii_lowercase().as_str() {
        "" if text.trim_start().starts_with('{') => "json".to_owned(),
        "" => "toml".to_owned(),
        f @ ("toml" | "json") => f.to_owned(),
        other => return Err(Error::invalid("invalid_format", format!("format `{other}`: use toml or json"))),
    };
    let parsed = if format == "json" {
        serde_json::from_str::<Definition>(text).map_err(|e| Error::invalid("invalid_definition", format!("json: {e}")))
    } else {
        toml::from_str::<Definition>(text)
            .map_err(|e| Error::invalid("invalid_definition", format!("toml: {}", e.message())))
    }?;
    Ok((format, parsed))
}

/// Checks a definition: names, actions, references, conditions, interpolations, gates
/// and cycles. Returns the waves.
pub fn validate(def: &Definition) -> Result<Vec<Vec<String>>> {
    if def.name.trim().is_empty() || def.name.len() > 200 {
        return Err(Error::invalid("invalid_name", "name must be 1 to 200 characters"));
    }
    if def.budget_usd.is_some_and(|b| !(b.is_finite() && b >= 0.0)) {
        return Err(Error::invalid("invalid_budget", "budget_usd must be a number of at least 0"));
    }
    if def.steps.is_empty() || def.steps.len() > MAX_STEPS {
        return Err(Error::invalid("invalid_steps", format!("a workflow has 1 to {MAX_STEPS} steps")));
    }
    let mut ids = HashSet::new();
    for step in &def.steps {
        let ok = !step.id.is_empty()
            && step.id.len() <= 64
            && step.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(Error::invalid(
                "invalid_step_id",
                format!("step id `{}`: 1-64 characters of a-z A-Z 0-9 _ -", step.id),
            ));
        }
        if !ids.insert(step.id.as_str()) {
            return Err(Error::invalid("duplicate_step", format!("step `{}` is defined twice", step.id)));
        }
    }
    for step in &def.steps {
        if !ACTIONS.contains(&step.action.as_str()) {
            return Err(Error::invalid(
                "invalid_action",
                format!("step `{}`: action `{}` is not one of {}", step.id, step.action, ACTIONS.join(", ")),
            ));
        }
        for dep in &step.depends_on {
            if !ids.contains(dep.as_str()) {
                return Err(Error::invalid(
                    "unknown_step",
                    format!("step `{}` depends on `{dep}`, which is not a step of this workflow", step.id),
                ));
            }
        }
        if step.for_each.is_some() && step.while_condition.is_some() {
            return Err(Error::invalid("invalid_loop", format!("step `{}`: for_each or while, not both", step.id)));
        }
        if let Some(n) = step.max_iterations
            && (n == 0 || n > MAX_ITERATIONS)
        {
            return Err(Error::invalid(
                "invalid_loop",
                format!("step `{}`: max_iterations is 1 to {MAX_ITERATIONS}", step.id),
            ));
        }
        if let Some(retry) = step.retry
            && (retry.attempts == 0 || retry.attempts > 20 || retry.backoff_ms > 3_600_000)
        {
            return Err(Error::invalid(
                "invalid_retry",
                format!("step `{}`: retry attempts are 1 to 20, backoff at most an hour", step.id),
            ));
        }
        if step.timeout_secs == Some(0) {
            return Err(Error::invalid(
                "invalid_timeout",
                format!("step `{}`: timeout_secs must be positive", step.id),
            ));
        }
        if let Some(Gate::Regex { pattern, .. }) = &step.gate {
            regex::Regex::new(pattern)
                .map_err(|e| Error::invalid("invalid_gate", format!("step `{}`: regex gate: {e}", step.id)))?;
        }
        if let Some(Gate::Threshold { min: None, max: None, .. }) = &step.gate {
            return Err(Error::invalid(
                "invalid_gate",
                format!("step `{}`: a threshold gate needs min or max", step.id),
            ));
        }
    }
    let waves = waves(def)?;
    let upstream = upstream(def);
    for step in &def.steps {
        let in_loop = step.for_each.is_some() || step.while_condition.is_some();
        let mut refs = expr::value_references(&Value::Object(step.config.clone())).map_err(|e| at(step, e))?;
        if let Some(when) = &step.when {
            refs.extend(Condition::parse(when).map_err(|e| at(step, e))?.references());
        }
        if let Some(cond) = &step.while_condition {
            refs.extend(Condition::parse(cond).map_err(|e| at(step, e))?.references());
        }
        if let Some(list) = &step.for_each {
            match list {
                Value::String(_) | Value::Array(_) => {
                    refs.extend(expr::value_references(list).map_err(|e| at(step, e))?)
                }
                _ => {
                    return Err(Error::invalid(
                        "invalid_loop",
                        format!("step `{}`: for_each is a list or a template", step.id),
                    ));
                }
            }
        }
        if let Some(Gate::LlmJudge { criteria, .. }) = &step.gate {
            refs.extend(expr::references(criteria).map_err(|e| at(step, e))?);
        }
        for path in refs {
            check_reference(def, step, &path, in_loop, &upstream[step.id.as_str()])?;
        }
    }
    Ok(waves)
}

fn at(step: &Step, error: Error) -> Error {
    Error::new(error.kind(), error.code().to_owned(), format!("step `{}`: {}", step.id, error.message()))
}

fn check_reference(def: &Definition, step: &Step, path: &Path, in_loop: bool, upstream: &HashSet<&str>) -> Result<()> {
    let name = &path.segments[0];
    match path.root.as_str() {
        "var" if !def.variables.contains_key(name) => Err(Error::invalid(
            "unknown_variable",
            format!("step `{}` reads var.{name}, which is not declared in [variables]", step.id),
        )),
        "result" if !def.steps.iter().any(|s| &s.id == name) => Err(Error::invalid(
            "unknown_reference",
            format!("step `{}` reads result.{name}, but there is no step `{name}`", step.id),
        )),
        "result" if !upstream.contains(name.as_str()) => Err(Error::invalid(
            "unknown_reference",
            format!("step `{}` reads result.{name} but does not depend on `{name}` (add it to depends_on)", step.id),
        )),
        "loop" if !in_loop => Err(Error::invalid(
            "unknown_reference",
            format!("step `{}` reads loop.{name} but has no for_each or while", step.id),
        )),
        _ => Ok(()),
    }
}

/// Every step's transitive dependencies.
fn upstream(def: &Definition) -> HashMap<&str, HashSet<&str>> {
    let deps: HashMap<&str, &Vec<String>> = def.steps.iter().map(|s| (s.id.as_str(), &s.depends_on)).collect();
    let mut out = HashMap::new();
    for step in &def.steps {
        let mut seen = HashSet::new();
        let mut stack: Vec<&str> = step.depends_on.iter().map(String::as_str).collect();
        while let Some(id) = stack.pop() {
            if seen.insert(id) {
                stack.extend(deps.get(id).into_iter().flat_map(|d| d.iter().map(String::as_str)));
            }
        }
        out.insert(step.id.as_str(), seen);
    }
    out
}

/// Topological levels: wave 0 has no dependencies, wave n depends only on earlier
/// waves; within a wave, declaration order. A cycle is `workflow_cycle` naming its path
/// along depends_on, e.g. `a -> b -> a` (a depends on b, b on a).
pub fn waves(def: &Definition) -> Result<Vec<Vec<String>>> {
    if let Some(cycle) = find_cycle(def) {
        return Err(Error::invalid("workflow_cycle", format!("dependency cycle: {}", cycle.join(" -> "))));
    }
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    let by_id: HashMap<&str, &Step> = def.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    fn depth<'a>(id: &'a str, by_id: &HashMap<&'a str, &'a Step>, level: &mut BTreeMap<&'a str, usize>) -> usize {
        if let Some(d) = level.get(id) {
            return *d;
        }
        let step: &'a Step = by_id[id];
        let d = step.depends_on.iter().map(|dep| depth(dep, by_id, level) + 1).max().unwrap_or(0);
        level.insert(id, d);
        d
    }
    let mut waves: Vec<Vec<String>> = Vec::new();
    for step in &def.steps {
        let d = depth(&step.id, &by_id, &mut level);
        if waves.len() <= d {
            waves.resize(d + 1, Vec::new());
        }
        waves[d].push(step.id.clone());
    }
    Ok(waves)
}

fn find_cycle(def: &Definition) -> Option<Vec<String>> {
    let by_id: HashMap<&str, &Step> = def.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    // 0 unvisited, 1 on the stack, 2 done
    let mut color: HashMap<&str, u8> = HashMap::new();
    for start in &def.steps {
        if color.get(start.id.as_str()).copied().unwrap_or(0) != 0 {
            continue;
        }
        // iterative DFS: (step, next dependency index)
        let mut stack: Vec<(&str, usize)> = vec![(start.id.as_str(), 0)];
        color.insert(start.id.as_str(), 1);
        while let Some((id, i)) = stack.last_mut() {
            let deps = &by_id[*id].depends_on;
            if *i >= deps.len() {
                color.insert(*id, 2);
                stack.pop();
                continue;
            }
            let next = deps[*i].as_str();
            *i += 1;
            if !by_id.contains_key(next) {
                continue;
            }
            match color.get(next).copied().unwrap_or(0) {
                0 => {
                    color.insert(next, 1);
                    stack.push((next, 0));
                }
                1 => {
                    let from = stack.iter().position(|(s, _)| *s == next).unwrap_or(0);
                    let mut path: Vec<String> = stack[from..].iter().map(|(s, _)| (*s).to_owned()).collect();
                    path.push(next.to_owned());
                    return Some(path);
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> std::result::Result<Vec<Vec<String>>, (String, String)> {
        let (_, def) = parse("toml", toml_text).map_err(|e| (e.code().to_owned(), e.message().to_owned()))?;
        validate(&def).map_err(|e| (e.code().to_owned(), e.message().to_owned()))
    }

    fn steps(body: &str) -> String {
        format!("name = \"t\"\n[variables]\nitems = [1, 2]\nflag = true\n{body}")
    }

    #[test]
    fn waves_are_topological_levels() {
        let text = steps(
            r#"
            [[steps]]
            id = "a"
            action = "wait"
            [[steps]]
            id = "b"
            action = "set"
            depends_on = ["a"]
            [[steps]]
            id = "c"
            action = "set"
            depends_on = ["a"]
            [[steps]]
            id = "d"
            action = "set"
            depends_on = ["b", "c"]
            [[steps]]
            id = "e"
            action = "wait"
            "#,
        );
        assert_eq!(check(&text).unwrap(), vec![vec!["a", "e"], vec!["b", "c"], vec!["d"]]);
    }

    #[test]
    fn refuses_bad_definitions_with_what_is_wrong() {
        let one = |extra: &str| steps(&format!("[[steps]]\nid = \"a\"\naction = \"set\"\n{extra}"));
        let cases: Vec<(String, &str, &str)> = vec![
            (
                steps(
                    "[[steps]]\nid = \"a\"\naction = \"set\"\ndepends_on = [\"c\"]\n\
                     [[steps]]\nid = \"b\"\naction = \"set\"\ndepends_on = [\"a\"]\n\
                     [[steps]]\nid = \"c\"\naction = \"set\"\ndepends_on = [\"b\"]\n",
                ),
                "workflow_cycle",
                "a -> c -> b -> a",
            ),
            (one("depends_on = [\"a\"]"), "workflow_cycle", "a -> a"),
            (one("depends_on = [\"ghost\"]"), "unknown_step", "`ghost`"),
            (one("config = { x = \"{{result.ghost.y}}\" }"), "unknown_reference", "no step `ghost`"),
            (
                steps(
                    "[[steps]]\nid = \"a\"\naction = \"set\"\n[[steps]]\nid = \"b\"\naction = \"set\"\nconfig = { x = \"{{result.a}}\" }\n",
                ),
                "unknown_reference",
                "does not depend on `a`",
            ),
            (one("config = { x = \"{{var.nope}}\" }"), "unknown_variable", "var.nope"),
            (one("config = { x = \"{{var.items\" }"), "invalid_interpolation", "step `a`"),
            (one("config = { x = \"{{loop.item}}\" }"), "unknown_reference", "no for_each"),
            (one("when = \"var.flag ==\""), "invalid_condition", "step `a`"),
            (one("for_each = 3"), "invalid_loop", "for_each"),
            (one("for_each = \"{{var.items}}\"\nwhile = \"var.flag\""), "invalid_loop", "not both"),
            (one("max_iterations = 0\nwhile = \"var.flag\""), "invalid_loop", "max_iterations"),
            (one("retry = { attempts = 0 }"), "invalid_retry", "attempts"),
            (one("gate = { kind = \"regex\", pattern = \"(\" }"), "invalid_gate", "regex"),
            (one("gate = { kind = \"threshold\", field = \"x\" }"), "invalid_gate", "min or max"),
            (one("gate = { kind = \"vibes\" }"), "invalid_definition", "vibes"),
            (one("surprise = 1"), "invalid_definition", "surprise"),
            (steps("[[steps]]\nid = \"a\"\naction = \"teleport\"\n"), "invalid_action", "teleport"),
            (steps("[[steps]]\nid = \"a b\"\naction = \"set\"\n"), "invalid_step_id", "a b"),
            (
                steps("[[steps]]\nid = \"a\"\naction = \"set\"\n[[steps]]\nid = \"a\"\naction = \"set\"\n"),
                "duplicate_step",
                "`a`",
            ),
            ("name = \"t\"\nsteps = []".to_owned(), "invalid_steps", "1 to"),
            ("name = [".to_owned(), "invalid_definition", "toml"),
        ];
        for (text, code, needle) in cases {
            let (got_code, message) = check(&text).unwrap_err();
            assert_eq!(got_code, code, "{text}: {message}");
            assert!(message.contains(needle), "{text}: `{message}` lacks `{needle}`");
        }
    }

    #[test]
    fn json_and_toml_give_the_same_definition() {
        let toml_text = "name = \"t\"\n[[steps]]\nid = \"a\"\naction = \"wait\"\nconfig = { ms = 5 }\n\
                         gate = { kind = \"threshold\", field = \"ms\", min = 1.0 }\n";
        let json_text = r#"{"name": "t", "steps": [{"id": "a", "action": "wait", "config": {"ms": 5},
                           "gate": {"kind": "threshold", "field": "ms", "min": 1.0}}]}"#;
        let (f1, a) = parse("", toml_text).unwrap();
        let (f2, b) = parse("", json_text).unwrap();
        assert_eq!((f1.as_str(), f2.as_str()), ("toml", "json"));
        assert_eq!(a, b);
        assert_eq!(parse("yaml", "x").unwrap_err().code(), "invalid_format");
    }
}
