//! The small expression language of workflow definitions.
//!
//! - **Interpolation**: `{{ path }}` inside any string of a step's `config`, `for_each`
//!   or `when`. A path is `var.NAME`, `result.STEP`, `loop.item`, `loop.index` or
//!   `loop.output` (the previous iteration's output in a `while` loop), followed by
//!   `.field` or `.0` (array index) segments. A string that is exactly one `{{ path }}`
//!   becomes the JSON value itself (an array stays an array); otherwise values are
//!   spliced in as text (strings raw, everything else as JSON).
//! - **Conditions** (`when`, `while`): operands joined by `==`, `!=`, `<`, `<=`, `>`,
//!   `>=`, combined with `&&`, `||` and `!` (no parentheses; `&&` binds tighter). An
//!   operand is a path (bare or in `{{ }}`), a number, a quoted string ('..' or ".."),
//!   `true`, `false` or `null`. A lone operand is tested for truth: `null`, `false`,
//!   `0`, `""` and `[]` are false.

use helix_core::{Error, Result};
use serde_json::Value;

/// A reference found in an expression: its root (`var`, `result`, `loop`) and the
/// segments after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub root: String,
    pub segments: Vec<String>,
}

impl Path {
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let mut parts = text.split('.');
        let root = parts.next().unwrap_or_default().to_owned();
        let segments: Vec<String> = parts.map(str::to_owned).collect();
        let ok_segment =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !matches!(root.as_str(), "var" | "result" | "loop") {
            return Err(bad(format!("`{text}`: a reference starts with var., result. or loop.")));
        }
        if segments.is_empty() || !segments.iter().all(|s| ok_segment(s)) {
            return Err(bad(format!("`{text}`: expected {root}.name with dot-separated fields")));
        }
        if root == "loop" && !matches!(segments[0].as_str(), "item" | "index" | "output") {
            return Err(bad(format!("`{text}`: loop has item, index and output")));
        }
        Ok(Self { root, segments })
    }
}

fn bad(message: String) -> Error {
    Error::invalid("invalid_interpolation", message)
}

/// The `{{ ... }}` references of a template, in order. An unclosed `{{` or a bad path
/// is an `invalid_interpolation` error.
pub fn references(template: &str) -> Result<Vec<Path>> {
    let mut paths = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| bad(format!("`{template}`: `{{{{` without `}}}}`")))?;
        paths.push(Path::parse(&after[..end])?);
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err(bad(format!("`{template}`: `}}}}` without `{{{{`")));
    }
    Ok(paths)
}

/// What paths resolve against.
pub trait Scope {
    fn lookup(&self, path: &Path) -> Value;
}

/// Walks `segments` into `value`; missing fields are `null`.
pub fn walk<'a>(mut value: &'a Value, segments: &[String]) -> &'a Value {
    for segment in segments {
        value = match value {
            Value::Object(map) => map.get(segment).unwrap_or(&Value::Null),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)).unwrap_or(&Value::Null),
            _ => &Value::Null,
        };
    }
    value
}

/// Interpolates one string.
pub fn render(template: &str, scope: &dyn Scope) -> Result<Value> {
    let trimmed = template.trim();
    if trimmed.starts_with("{{") && trimmed.ends_with("}}") && trimmed[2..].find("}}") == Some(trimmed.len() - 4) {
        return Ok(scope.lookup(&Path::parse(&trimmed[2..trimmed.len() - 2])?));
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| bad(format!("`{template}`: `{{{{` without `}}}}`")))?;
        match scope.lookup(&Path::parse(&after[..end])?) {
            Value::String(s) => out.push_str(&s),
            Value::Null => {}
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Interpolates every string inside a JSON value.
pub fn render_value(value: &Value, scope: &dyn Scope) -> Result<Value> {
    Ok(match value {
        Value::String(s) => render(s, scope)?,
        Value::Array(items) => Value::Array(items.iter().map(|v| render_value(v, scope)).collect::<Result<_>>()?),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), render_value(v, scope)?))).collect::<Result<_>>()?)
        }
        other => other.clone(),
    })
}

/// Every reference inside a JSON value's strings.
pub fn value_references(value: &Value) -> Result<Vec<Path>> {
    let mut out = Vec::new();
    match value {
        Value::String(s) => out.extend(references(s)?),
        Value::Array(items) => {
            for item in items {
                out.extend(value_references(item)?);
            }
        }
        Value::Object(map) => {
            for item in map.values() {
                out.extend(value_references(item)?);
            }
        }
        _ => {}
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Path),
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    negated: bool,
    left: Operand,
    right: Option<(Op, Operand)>,
}

/// A parsed condition: `||` of `&&` of comparisons.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    any: Vec<Vec<Comparison>>,
}

fn bad_condition(text: &str, why: &str) -> Error {
    Error::invalid("invalid_condition", format!("condition `{text}`: {why}"))
}

impl Condition {
    pub fn parse(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Err(bad_condition(text, "empty"));
        }
        let any = split_outside_quotes(text, "||")
            .into_iter()
            .map(|conj| {
                split_outside_quotes(&conj, "&&").into_iter().map(|c| comparison(text, &c)).collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { any })
    }

    pub fn references(&self) -> Vec<Path> {
        let mut out = Vec::new();
        for c in self.any.iter().flatten() {
            for operand in std::iter::once(&c.left).chain(c.right.as_ref().map(|(_, o)| o)) {
                if let Operand::Path(p) = operand {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    pub fn eval(&self, scope: &dyn Scope) -> bool {
        self.any.iter().any(|all| all.iter().all(|c| c.eval(scope)))
    }
}

impl Comparison {
    fn eval(&self, scope: &dyn Scope) -> bool {
        let value = |o: &Operand| match o {
            Operand::Path(p) => scope.lookup(p),
            Operand::Literal(v) => v.clone(),
        };
        let left = value(&self.left);
        let result = match &self.right {
            None => truthy(&left),
            Some((op, right)) => compare(&left, *op, &value(right)),
        };
        result != self.negated
    }
}

pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

fn compare(left: &Value, op: Op, right: &Value) -> bool {
    use std::cmp::Ordering;
    let ordering = match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().zip(b.as_f64()).and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        // a number held as text compares as a number
        (Value::String(a), Value::Number(b)) => {
            a.parse::<f64>().ok().zip(b.as_f64()).and_then(|(a, b)| a.partial_cmp(&b))
        }
        (Value::Number(a), Value::String(b)) => {
            a.as_f64().zip(b.parse::<f64>().ok()).and_then(|(a, b)| a.partial_cmp(&b))
        }
        (a, b) if a == b => Some(Ordering::Equal),
        _ => None,
    };
    match op {
        Op::Eq => ordering == Some(Ordering::Equal),
        Op::Ne => ordering != Some(Ordering::Equal),
        Op::Lt => ordering == Some(Ordering::Less),
        Op::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        Op::Gt => ordering == Some(Ordering::Greater),
        Op::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// Splits on `sep` where it is not inside quotes.
fn split_outside_quotes(text: &str, sep: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < text.len() {
        let c = text[i..].chars().next().unwrap_or(' ');
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if text[i..].starts_with(sep) => {
                parts.push(std::mem::take(&mut current));
                i += sep.len();
                continue;
            }
            None => {}
        }
        current.push(c);
        i += c.len_utf8();
    }
    parts.push(current);
    parts
}

fn comparison(whole: &str, text: &str) -> Result<Comparison> {
    let mut text = text.trim();
    let mut negated = false;
    while let Some(rest) = text.strip_prefix('!') {
        if rest.starts_with('=') {
            break;
        }
        negated = !negated;
        text = rest.trim_start();
    }
    for (token, op) in [("==", Op::Eq), ("!=", Op::Ne), ("<=", Op::Le), (">=", Op::Ge), ("<", Op::Lt), (">", Op::Gt)] {
        let parts = split_outside_quotes(text, token);
        if parts.len() == 2 {
            return Ok(Comparison {
                negated,
                left: operand(whole, &parts[0])?,
                right: Some((op, operand(whole, &parts[1])?)),
            });
        }
        if parts.len() > 2 {
            return Err(bad_condition(whole, "chained comparisons are not supported"));
        }
    }
    Ok(Comparison { negated, left: operand(whole, text)?, right: None })
}

fn operand(whole: &str, text: &str) -> Result<Operand> {
    let text = text.trim();
    if text.is_empty() {
        return Err(bad_condition(whole, "an operand is missing"));
    }
    if let Some(inner) = text.strip_prefix("{{").and_then(|t| t.strip_suffix("}}")) {
        return Ok(Operand::Path(Path::parse(inner)?));
    }
    for q in ['\'', '"'] {
        if text.len() >= 2 && text.starts_with(q) && text.ends_with(q) {
            return Ok(Operand::Literal(Value::String(text[1..text.len() - 1].to_owned())));
        }
    }
    match text {
        "true" => return Ok(Operand::Literal(Value::Bool(true))),
        "false" => return Ok(Operand::Literal(Value::Bool(false))),
        "null" => return Ok(Operand::Literal(Value::Null)),
        _ => {}
    }
    if let Ok(n) = text.parse::<f64>() {
        return Ok(Operand::Literal(serde_json::json!(n)));
    }
    if text.starts_with("var.") || text.starts_with("result.") || text.starts_with("loop.") {
        return Ok(Operand::Path(Path::parse(text)?));
    }
    Err(bad_condition(whole, &format!("`{text}` is not a reference, number, string or true/false/null")))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    struct Vars(Value);
    impl Scope for Vars {
        fn lookup(&self, path: &Path) -> Value {
            walk(&self.0[&path.root], &path.segments).clone()
        }
    }

    fn scope() -> Vars {
        Vars(json!({
            "var": {"n": 3, "name": "ada", "items": ["a", "b"], "flag": true, "empty": ""},
            "result": {"s": {"score": 0.8, "title": "x y"}},
            "loop": {"index": 2}
        }))
    }

    #[test]
    fn renders_templates() {
        let cases = [
            ("{{var.items}}", json!(["a", "b"])),
            ("{{ var.n }}", json!(3)),
            ("hi {{var.name}}, n={{var.n}}", json!("hi ada, n=3")),
            ("{{var.items.1}}", json!("b")),
            ("{{result.s.title}}!", json!("x y!")),
            ("{{var.missing}}", Value::Null),
            ("{{var.name}}{{var.n}}", json!("ada3")),
            ("plain", json!("plain")),
        ];
        for (template, expected) in cases {
            assert_eq!(render(template, &scope()).unwrap(), expected, "{template}");
        }
    }

    #[test]
    fn refuses_bad_templates() {
        for template in ["{{var.n", "{{nope.x}}", "{{var}}", "{{var..x}}", "x }} y", "{{loop.other}}", "{{ }}"] {
            let error = references(template).unwrap_err();
            assert_eq!(error.code(), "invalid_interpolation", "{template}");
        }
    }

    #[test]
    fn evaluates_conditions() {
        let cases = [
            ("var.n == 3", true),
            ("{{var.n}} > 2 && var.name == 'ada'", true),
            ("var.n < 3 || var.flag", true),
            ("!var.flag", false),
            ("var.empty", false),
            ("result.s.score >= 0.8", true),
            ("result.s.score > 0.9", false),
            ("var.name != \"ada\"", false),
            ("loop.index < 5", true),
            ("var.missing == null", true),
            ("var.name == 'a || b'", false),
        ];
        for (text, expected) in cases {
            assert_eq!(Condition::parse(text).unwrap().eval(&scope()), expected, "{text}");
        }
    }

    #[test]
    fn refuses_bad_conditions() {
        for (text, code) in [
            ("", "invalid_condition"),
            ("var.n ==", "invalid_condition"),
            ("1 < 2 < 3", "invalid_condition"),
            ("bogus == 1", "invalid_condition"),
            ("other.x", "invalid_condition"),
            ("{{var}} == 1", "invalid_interpolation"),
        ] {
            assert_eq!(Condition::parse(text).unwrap_err().code(), code, "{text}");
        }
    }
}
