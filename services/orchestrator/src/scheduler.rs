//! Scheduler workflows (`/api/v1/scheduler/workflows`): a named list of tasks with
//! dependencies, priorities and estimates, run by the same engine. Each task becomes a
//! step: an `assignee` that names an action (`wait`, `http`, `store`, ...) runs it with
//! the task's payload as config; any other assignee is a job kind, enqueued on the jobs
//! service with the payload; no assignee passes the payload through (`set`). Gates map
//! onto the engine's: `min_score` → threshold on the output's `score`, `output_schema` →
//! json_schema, `llm_review` → llm_judge. They are stored in the workflows table with
//! format `scheduler`, so one execution model serves both.

use std::collections::HashMap;

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
/// (the chain of dependencies with the largest estimated duration) and its length.
pub struct Preview {
    pub waves: Vec<Vec<String>>,
    pub critical_path: Vec<String>,
    pub estimated_duration_secs: u32,
    pub warnings: Vec<String>,
}

pub fn preview(spec: &SchedulerSpec) -> Result<Preview> {
    let def = spec.definition()?;
    let by_id: HashMap<&str, &TaskSpec> = spec.tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let mut waves = definition::waves(&def)?;
    for wave in &mut waves {
        wave.sort_by_key(|id| std::cmp::Reverse(by_id[id.as_str()].priority));
    }
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
    let warnings = spec
        .tasks
        .iter()
        .filter(|t| t.estimated_duration_secs.is_none())
        .map(|t| format!("task `{}` has no estimated duration", t.task_id))
        .collect();
    Ok(Preview { waves, critical_path, estimated_duration_secs, warnings })
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
    fn refuses_cycles_and_unknown_gates() {
        let mut spec = SchedulerSpec {
            name: "p".into(),
            description: String::new(),
            tasks: vec![task("a", &["b"], 0, 1), task("b", &["a"], 0, 1)],
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
}
