//! Scheduler workflows (`/api/v1/scheduler/workflows`): a named list of tasks with
//! dependencies, priorities and estimates, run by the same engine. Each task becomes a
//! step: an `assignee` that names an action (`wait`, `http`, `store`, ...) runs it with
//! the task's payload as config; any other assignee is a job kind, enqueued on the jobs
//! service with the payload; no assignee passes the payload through (`set`). Gates map
//! onto the engine's: `min_score` → threshold on the output's `score`, `output_schema` →
//! json_schema, `llm_review` → llm_judge. They are stored in the workflows table with
//! format `scheduler`, so one execution model serves both.
//!
//! The original system's limits, with the meaning they had there:
//!
//! - `deadline` (RFC 3339): the time by which a run must have ended. The preview says
//!   whether the critical path, started now, ends by then (`fits_deadline`). A run still
//!   going at the deadline stops its running tasks and fails with the reason, naming the
//!   tasks left unfinished (they end `cancelled`); a run started after it fails at once.
//! - `budget` (`budget_usd`, USD): in the original, budget is money spent on LLM calls —
//!   its budget tracker caps spend per provider and per day and, when a cap is reached,
//!   downgrades to a cheaper model or rejects the call (`HELIX_BUDGET_ACTION`). A
//!   workflow's budget is that cap for one run: the preview sums the tasks'
//!   `estimated_cost_usd` against it (`fits_budget`); in a run, each LLM call (an
//!   `llm.generate` task, an `llm_review` gate) goes to the router with what is left as
//!   its cap (`max_cost_usd`), so the router downgrades or refuses a call that could
//!   overspend, as it does for the daily budget; once the run has spent its budget, no
//!   further task starts and the run fails saying so. Tasks that call no LLM cost nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::definition::{self, Definition, Gate, Retry, Step};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub tasks: Vec<TaskSpec>,
    /// each run must end by then: see the module doc
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// USD each run may spend on LLM calls: see the module doc
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub assignee: String,
    #[serde(default)]
    pub estimated_duration_secs: Option<u32>,
    /// what the task is expected to cost, USD: the preview sums it against the budget
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost_usd: Option<f64>,
    #[serde(default)]
    pub max_retries: u32,
    #[serde(default)]
    pub payload: Map<String, Value>,
    #[serde(default)]
    pub gates: Vec<GateSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateSpec {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub threshold: f64,
    #[serde(default)]
    pub config: Value,
}

impl SchedulerSpec {
    /// The engine definition this spec runs as; refuses what the engine would.
    pub fn definition(&self) -> Result<Definition> {
        let steps = self.tasks.iter().map(step).collect::<Result<Vec<_>>>()?;
        let def = Definition {
            name: self.name.clone(),
            description: self.description.clone(),
            variables: Map::new(),
            tags: vec!["scheduler".into()],
            steps,
            deadline: self.deadline,
            budget_usd: self.budget_usd,
        };
        definition::validate(&def)?;
        Ok(def)
    }
}

fn step(task: &TaskSpec) -> Result<Step> {
    let (action, config) = if definition::ACTIONS.contains(&task.assignee.as_str()) {
        (task.assignee.clone(), task.payload.clone())
    } else if task.assignee.is_empty() {
        let mut config = Map::new();
        config.insert("value".into(), Value::Object(task.payload.clone()));
        ("set".to_owned(), config)
    } else {
        let config = json!({"kind": task.assignee, "payload": task.payload});
        ("job".to_owned(), config.as_object().cloned().unwrap_or_default())
    };
    if task.gates.len() > 1 {
        return Err(Error::invalid("invalid_gate", format!("task `{}`: one quality gate per task", task.task_id)));
    }
    let gate = task.gates.first().map(|g| gate(&task.task_id, g)).transpose()?;
    Ok(Step {
        id: task.task_id.clone(),
        name: task.description.chars().take(200).collect(),
        action,
        depends_on: task.dependencies.clone(),
        when: None,
        for_each: None,
        while_condition: None,
        max_iterations: None,
        parallel_group: String::new(),
        retry: (task.max_retries > 0).then_some(Retry { attempts: task.max_retries + 1, backoff_ms: 500 }),
        timeout_secs: None,
        config,
        gate,
    })
}

fn gate(task: &str, g: &GateSpec) -> Result<Gate> {
    Ok(match g.kind.as_str() {
        "min_score" => Gate::Threshold { field: "score".into(), min: Some(g.threshold), max: None },
        "output_schema" => Gate::JsonSchema { field: String::new(), schema: g.config.clone() },
        "llm_review" => Gate::LlmJudge {
            criteria: g.config.get("rubric").and_then(Value::as_str).unwrap_or(&g.name).to_owned(),
            threshold: g.threshold,
            model: String::new(),
        },
        other => {
            return Err(Error::invalid(
                "invalid_gate",
                format!("task `{task}`: gate kind `{other}` (min_score, output_schema or llm_review)"),
            ));
        }
    })
}

/// A preview: waves with their tasks by priority (highest first), the critical path
/// (the chain of dependencies with the largest estimated duration) and its length, the
/// estimated cost (the tasks' estimates summed) and whether both fit the limits.
pub struct Preview {
    pub waves: Vec<Vec<String>>,
    pub critical_path: Vec<String>,
    pub estimated_duration_secs: u32,
    pub estimated_cost_usd: f64,
    pub fits_deadline: bool,
    pub fits_budget: bool,
    pub warnings: Vec<String>,
}

/// Topological levels of tasks whose dependencies are all among them, each wave by
/// priority (highest first, then declaration order); a cycle is `workflow_cycle` naming
/// its path.
pub fn waves_by_priority(tasks: &[TaskSpec]) -> Result<Vec<Vec<String>>> {
    let by_id: HashMap<&str, &TaskSpec> = tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let steps = tasks.iter().map(step).collect::<Result<Vec<_>>>()?;
    let def = Definition {
        name: String::new(),
        description: String::new(),
        variables: Map::new(),
        tags: Vec::new(),
        steps,
        deadline: None,
        budget_usd: None,
    };
    let mut waves = definition::waves(&def)?;
    for wave in &mut waves {
        wave.sort_by_key(|id| std::cmp::Reverse(by_id[id.as_str()].priority));
    }
    Ok(waves)
}

/// The plan of `spec` as if started now, against its deadline and budget (or these).
pub fn preview(spec: &SchedulerSpec) -> Result<Preview> {
    preview_with(spec, spec.deadline, spec.budget_usd, Utc::now())
}

pub fn preview_with(
    spec: &SchedulerSpec,
    deadline: Option<DateTime<Utc>>,
    budget_usd: Option<f64>,
    now: DateTime<Utc>,
) -> Result<Preview> {
    spec.definition()?;
    let by_id: HashMap<&str, &TaskSpec> = spec.tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let waves = waves_by_priority(&spec.tasks)?;
    // longest path by estimated duration, in wave order (dependencies come first)
    let mut best: HashMap<&str, (u32, Option<&str>)> = HashMap::new();
    for id in waves.iter().flatten() {
        let task = by_id[id.as_str()];
        let own = task.estimated_duration_secs.unwrap_or(0);
        let before = task.dependencies.iter().map(|d| (best[d.as_str()].0, d.as_str())).max_by_key(|(secs, _)| *secs);
        let (start, from) = before.map_or((0, None), |(secs, d)| (secs, Some(d)));
        best.insert(id.as_str(), (start + own, from));
    }
    let end = best.iter().max_by_key(|(id, (secs, _))| (*secs, std::cmp::Reverse(**id))).map(|(id, _)| *id);
    let mut critical_path = Vec::new();
    let mut at = end;
    while let Some(id) = at {
        critical_path.push(id.to_owned());
        at = best[id].1;
    }
    critical_path.reverse();
    let estimated_duration_secs = end.map_or(0, |id| best[id].0);
    let mut warnings: Vec<String> = spec
        .tasks
        .iter()
        .filter(|t| t.estimated_duration_secs.is_none())
        .map(|t| format!("task `{}` has no estimated duration", t.task_id))
        .collect();
    // to a billionth of a dollar: 0.1 + 0.2 is 0.3, and fits a budget of 0.3
    let estimated_cost_usd = (spec.tasks.iter().filter_map(|t| t.estimated_cost_usd).sum::<f64>() * 1e9).round() / 1e9;
    let ends = now + chrono::Duration::seconds(i64::from(estimated_duration_secs));
    let fits_deadline = deadline.is_none_or(|d| ends <= d);
    let fits_budget = budget_usd.is_none_or(|b| estimated_cost_usd <= b);
    if let Some(d) = deadline.filter(|_| !fits_deadline) {
        warnings.push(format!(
            "started now, the critical path ({estimated_duration_secs} s) ends after the deadline {}",
            d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if let Some(b) = budget_usd.filter(|_| !fits_budget) {
        warnings.push(format!("the tasks' estimated cost {} is over the budget {}", usd(estimated_cost_usd), usd(b)));
    }
    Ok(Preview {
        waves,
        critical_path,
        estimated_duration_secs,
        estimated_cost_usd,
        fits_deadline,
        fits_budget,
        warnings,
    })
}

/// Dollars as people read them: `$0.25`, `$0.00000405` (no float noise, no trailing 0s).
pub fn usd(amount: f64) -> String {
    // an empty float sum is -0.0
    let amount = amount + 0.0;
    let text = format!("{amount:.8}");
    let text = text.trim_end_matches('0');
    let text = text.strip_suffix('.').map_or_else(|| text.to_owned(), |t| format!("{t}.00"));
    format!("${text}")
}

/// A built-in template: a task graph whose payloads and descriptions carry
/// `{{param.NAME}}` placeholders, bound when it is previewed or instantiated. The
/// engine's `{{var.x}}` stays free for run-time variables.
pub struct Template {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: Vec<TemplateParameter>,
    pub tasks: Vec<TaskSpec>,
}

pub struct TemplateParameter {
    pub name: &'static str,
    pub description: &'static str,
    /// `None` makes the parameter required
    pub default: Option<Value>,
}

fn param(name: &'static str, description: &'static str, default: Option<Value>) -> TemplateParameter {
    TemplateParameter { name, description, default }
}

fn template_task(id: &str, deps: &[&str], priority: i32, secs: u32, description: &str, payload: Value) -> TaskSpec {
    TaskSpec {
        task_id: id.into(),
        description: description.into(),
        dependencies: deps.iter().map(|d| (*d).to_owned()).collect(),
        priority,
        assignee: String::new(),
        estimated_duration_secs: Some(secs),
        estimated_cost_usd: None,
        max_retries: 0,
        payload: payload.as_object().cloned().unwrap_or_default(),
        gates: Vec::new(),
    }
}

/// The seed's kinds of task graph: a research/analysis pipeline, an ETL pipeline and a
/// review chain. Their tasks pass their payloads through (no assignee), so they run
/// with no provider; a copy made with `instantiate` can be given assignees and replaced.
pub fn templates() -> Vec<Template> {
    let mut approve = template_task(
        "approve",
        &["revise"],
        0,
        5,
        "approve {{param.subject}}",
        json!({"decision": "approved", "score": 1.0}),
    );
    approve.gates.push(GateSpec {
        name: "approval".into(),
        kind: "min_score".into(),
        threshold: 0.8,
        config: Value::Null,
    });
    vec![
        Template {
            name: "research_pipeline",
            description: "gather sources on a topic, analyse them and extract claims in parallel, synthesise, report",
            parameters: vec![
                param("topic", "what to research", None),
                param("max_sources", "how many sources to gather", Some(json!(10))),
            ],
            tasks: vec![
                template_task(
                    "gather_sources",
                    &[],
                    10,
                    60,
                    "collect sources on {{param.topic}}",
                    json!({"topic": "{{param.topic}}", "max_sources": "{{param.max_sources}}"}),
                ),
                template_task("analyze_sources", &["gather_sources"], 8, 90, "analyse the sources", json!({})),
                template_task("extract_claims", &["gather_sources"], 5, 45, "extract claims and evidence", json!({})),
                template_task(
                    "synthesize",
                    &["analyze_sources", "extract_claims"],
                    5,
                    60,
                    "synthesise findings",
                    json!({}),
                ),
                template_task(
                    "report",
                    &["synthesize"],
                    0,
                    30,
                    "write the report",
                    json!({"title": "Research: {{param.topic}}"}),
                ),
            ],
        },
        Template {
            name: "etl",
            description: "extract from a source, validate and transform in parallel, load, verify",
            parameters: vec![
                param("source", "where the records come from", None),
                param("destination", "where they go", Some(json!("helix"))),
            ],
            tasks: vec![
                template_task(
                    "extract",
                    &[],
                    10,
                    20,
                    "extract from {{param.source}}",
                    json!({"source": "{{param.source}}"}),
                ),
                template_task("validate", &["extract"], 8, 10, "validate the records", json!({})),
                template_task("transform", &["extract"], 5, 40, "transform the records", json!({})),
                template_task(
                    "load",
                    &["validate", "transform"],
                    0,
                    15,
                    "load into {{param.destination}}",
                    json!({"destination": "{{param.destination}}"}),
                ),
                template_task("verify", &["load"], 0, 5, "verify the load", json!({})),
            ],
        },
        Template {
            name: "review_chain",
            description: "draft, technical and style reviews in parallel, revise, approve behind a score gate",
            parameters: vec![param("subject", "what is reviewed", None)],
            tasks: vec![
                template_task("draft", &[], 0, 30, "draft {{param.subject}}", json!({"subject": "{{param.subject}}"})),
                template_task("technical_review", &["draft"], 10, 20, "technical review", json!({})),
                template_task("style_review", &["draft"], 5, 15, "style review", json!({})),
                template_task(
                    "revise",
                    &["technical_review", "style_review"],
                    0,
                    25,
                    "revise after the reviews",
                    json!({}),
                ),
                approve,
            ],
        },
    ]
}

pub fn template(name: &str) -> Result<Template> {
    templates().into_iter().find(|t| t.name == name).ok_or_else(|| Error::not_found("scheduler template", name))
}

impl Template {
    /// The template's tasks with `parameters` (and the defaults of those not given)
    /// bound; an unknown or a missing required parameter is refused.
    pub fn bind(&self, parameters: &Map<String, Value>) -> Result<Vec<TaskSpec>> {
        if let Some(unknown) = parameters.keys().find(|k| !self.parameters.iter().any(|p| p.name == k.as_str())) {
            return Err(Error::invalid(
                "unknown_parameter",
                format!("template `{}` has no parameter `{unknown}`", self.name),
            ));
        }
        let mut values = Map::new();
        for p in &self.parameters {
            let value = parameters.get(p.name).or(p.default.as_ref()).ok_or_else(|| {
                Error::invalid("missing_parameter", format!("template `{}` needs parameter `{}`", self.name, p.name))
            })?;
            values.insert(p.name.to_owned(), value.clone());
        }
        let mut tasks = self.tasks.clone();
        for task in &mut tasks {
            task.description = substitute(&task.description, &values);
            for value in task.payload.values_mut() {
                bind_value(value, &values);
            }
        }
        Ok(tasks)
    }

    /// A scheduler workflow named `name` made of the bound tasks.
    pub fn instantiate(&self, name: String, parameters: &Map<String, Value>) -> Result<SchedulerSpec> {
        let spec = SchedulerSpec {
            name,
            description: self.description.to_owned(),
            tasks: self.bind(parameters)?,
            deadline: None,
            budget_usd: None,
        };
        spec.definition()?;
        Ok(spec)
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn substitute(text: &str, values: &Map<String, Value>) -> String {
    values
        .iter()
        .fold(text.to_owned(), |text, (name, value)| text.replace(&format!("{{{{param.{name}}}}}"), &text_of(value)))
}

/// A string that is exactly one placeholder takes the parameter's JSON value (a number
/// stays a number); placeholders inside longer strings are replaced by text.
fn bind_value(value: &mut Value, values: &Map<String, Value>) {
    match value {
        Value::String(s) => {
            let whole = s.strip_prefix("{{param.").and_then(|r| r.strip_suffix("}}")).and_then(|n| values.get(n));
            *value = match whole {
                Some(v) => v.clone(),
                None => Value::String(substitute(s, values)),
            };
        }
        Value::Array(items) => items.iter_mut().for_each(|v| bind_value(v, values)),
        Value::Object(map) => map.values_mut().for_each(|v| bind_value(v, values)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, deps: &[&str], priority: i32, secs: u32) -> TaskSpec {
        TaskSpec {
            task_id: id.into(),
            description: String::new(),
            dependencies: deps.iter().map(|d| (*d).to_owned()).collect(),
            priority,
            assignee: String::new(),
            estimated_duration_secs: Some(secs),
            estimated_cost_usd: None,
            max_retries: 0,
            payload: Map::new(),
            gates: Vec::new(),
        }
    }

    #[test]
    fn preview_orders_waves_by_priority_and_finds_the_critical_path() {
        let spec = SchedulerSpec {
            name: "p".into(),
            description: String::new(),
            deadline: None,
            budget_usd: None,
            tasks: vec![
                task("fetch", &[], 1, 10),
                task("index", &[], 5, 2),
                task("parse", &["fetch"], 0, 30),
                task("rank", &["index"], 0, 5),
                task("report", &["parse", "rank"], 0, 1),
            ],
        };
        let p = preview(&spec).unwrap();
        assert_eq!(p.waves, vec![vec!["index", "fetch"], vec!["parse", "rank"], vec!["report"]]);
        assert_eq!(p.critical_path, vec!["fetch", "parse", "report"]);
        assert_eq!(p.estimated_duration_secs, 41);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn preview_weighs_the_deadline_and_the_budget() {
        let now: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        let mut spec = SchedulerSpec {
            name: "p".into(),
            description: String::new(),
            tasks: vec![task("a", &[], 0, 60), task("b", &["a"], 0, 60)],
            deadline: None,
            budget_usd: None,
        };
        spec.tasks[0].estimated_cost_usd = Some(0.1);
        spec.tasks[1].estimated_cost_usd = Some(0.2);
        let at = |secs: i64| Some(now + chrono::Duration::seconds(secs));
        // (deadline, budget) → (fits_deadline, fits_budget, warnings)
        let cases = [
            ((None, None), (true, true, 0)),
            ((at(120), Some(0.3)), (true, true, 0)),
            ((at(119), Some(0.3)), (false, true, 1)),
            ((at(120), Some(0.29)), (true, false, 1)),
            ((at(-1), Some(0.0)), (false, false, 2)),
        ];
        for ((deadline, budget), expected) in cases {
            let p = preview_with(&spec, deadline, budget, now).unwrap();
            assert!((p.estimated_cost_usd - 0.3).abs() < 1e-9);
            assert_eq!((p.fits_deadline, p.fits_budget, p.warnings.len()), expected, "{deadline:?} {budget:?}");
        }
    }

    #[test]
    fn dollars_read_as_dollars() {
        let cases = [
            (0.0, "$0.00"),
            (-0.0, "$0.00"),
            (0.25, "$0.25"),
            (0.1 + 0.2, "$0.3"),
            (0.0000001, "$0.0000001"),
            (12.0, "$12.00"),
        ];
        for (amount, text) in cases {
            assert_eq!(usd(amount), text, "{amount}");
        }
    }

    #[test]
    fn refuses_cycles_and_unknown_gates() {
        let mut spec = SchedulerSpec {
            name: "p".into(),
            description: String::new(),
            tasks: vec![task("a", &["b"], 0, 1), task("b", &["a"], 0, 1)],
            deadline: None,
            budget_usd: None,
        };
        assert_eq!(preview(&spec).err().map(|e| e.code().to_owned()).as_deref(), Some("workflow_cycle"));
        spec.tasks = vec![task("a", &[], 0, 1)];
        spec.tasks[0].gates.push(GateSpec {
            name: "g".into(),
            kind: "vibes".into(),
            threshold: 0.0,
            config: Value::Null,
        });
        assert_eq!(preview(&spec).err().map(|e| e.code().to_owned()).as_deref(), Some("invalid_gate"));
    }

    #[test]
    fn waves_by_priority_are_levels_and_cycles_are_named() {
        type Graph<'a> = &'a [(&'a str, &'a [&'a str], i32)];
        type Expected<'a> = std::result::Result<Vec<Vec<&'a str>>, &'a str>;
        let check = |graph: Graph| -> std::result::Result<Vec<Vec<String>>, String> {
            let tasks: Vec<TaskSpec> = graph.iter().map(|(id, deps, p)| task(id, deps, *p, 1)).collect();
            waves_by_priority(&tasks).map_err(|e| e.to_string())
        };
        let cases: [(Graph, Expected); 6] = [
            (&[], Ok(vec![])),
            (&[("a", &[], 0)], Ok(vec![vec!["a"]])),
            (&[("a", &[], 0), ("b", &[], 3), ("c", &[], 3)], Ok(vec![vec!["b", "c", "a"]])),
            (&[("a", &[], 0), ("b", &["a"], 0), ("c", &["a", "b"], 0)], Ok(vec![vec!["a"], vec!["b"], vec!["c"]])),
            (&[("a", &["a"], 0)], Err("dependency cycle: a -> a")),
            (&[("a", &["c"], 0), ("b", &["a"], 0), ("c", &["b"], 0)], Err("dependency cycle: a -> c -> b -> a")),
        ];
        for (graph, expected) in cases {
            let expected = expected.map(|w| w.iter().map(|l| l.iter().map(|s| (*s).to_owned()).collect()).collect());
            assert_eq!(check(graph), expected.map_err(str::to_owned), "{graph:?}");
        }
    }

    #[test]
    fn templates_bind_their_parameters() {
        let topic = |v: Value| {
            let p = json!({"topic": v}).as_object().cloned().unwrap();
            template("research_pipeline").unwrap().bind(&p).map(|t| (t[0].payload.clone(), t[0].description.clone()))
        };
        let (payload, description) = topic(json!("tides")).unwrap();
        assert_eq!(Value::Object(payload), json!({"topic": "tides", "max_sources": 10}));
        assert_eq!(description, "collect sources on tides");
        let (payload, description) = topic(json!(42)).unwrap();
        assert_eq!((payload["topic"].clone(), description.as_str()), (json!(42), "collect sources on 42"));
        let cases = [
            ("research_pipeline", json!({}), Some("missing_parameter")),
            ("research_pipeline", json!({"topic": "t", "x": 1}), Some("unknown_parameter")),
            ("etl", json!({"source": "s"}), None),
            ("nope", json!({}), Some("not_found")),
        ];
        for (name, params, code) in cases {
            let bound = template(name).and_then(|t| t.instantiate("w".into(), params.as_object().unwrap()));
            assert_eq!(bound.err().map(|e| e.code().to_owned()).as_deref(), code, "{name} {params}");
        }
        for t in templates() {
            let params: Map<String, Value> = t.parameters.iter().map(|p| (p.name.to_owned(), json!("x"))).collect();
            let spec = t.instantiate(t.name.to_owned(), &params).unwrap();
            assert!(preview(&spec).unwrap().warnings.is_empty(), "{}: every task has an estimate", t.name);
        }
    }
}
