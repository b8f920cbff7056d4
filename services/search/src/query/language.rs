//! The query language: whatever a person types or pastes, read as words, with operators
//! only where they cannot mean anything else.
//!
//! - words: any run of characters between spaces; the field's tokenizer splits it further
//!   (`e-mail` and `Log—This` become two adjacent words, a phrase). A run without a letter
//!   or digit (`-`, `—`, `…`, an emoji) is no word and drops out.
//! - `"a phrase"`, also when the closing quote is missing (it runs to the end); `"…"~2`
//!   allows words in between, `"big bad wo"*` ends in a prefix.
//! - `-word` / `-"phrase"` / `-(group)` excludes and `+word` requires, only with the sign
//!   right before it at the start of a run: `a - b` and `a—b` are words.
//! - `AND` and `OR` (in capitals) between two terms combine them; elsewhere
//!   (`AND then`, `rock OR`) they are words. `AND` binds closer than `OR`.
//! - `(` `)` group when they balance; otherwise they are spaces. Other brackets are spaces.
//! - `title:`, `content:` and `tags:` before a word or phrase search that field alone;
//!   any other colon (`Note: call`, `12:30`) is punctuation.
//! - `word^2` boosts a term by a positive number; `word*` is a prefix.

use tantivy::query::Occur;
use tantivy::query_grammar::{Delimiter, UserInputAst, UserInputLeaf, UserInputLiteral};

/// The fields a query may name.
const FIELDS: [&str; 3] = ["title", "content", "tags"];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Term(Term),
    And,
    Or,
    Open(Option<Occur>),
    Close,
}

#[derive(Debug, Clone, PartialEq)]
struct Term {
    occur: Option<Occur>,
    field: Option<String>,
    text: String,
    quoted: bool,
    slop: u32,
    prefix: bool,
    boost: Option<f64>,
}

/// The query text as tantivy's query AST; `None` when it holds no word at all.
pub fn parse(text: &str) -> Option<UserInputAst> {
    let mut tokens = lex(text);
    if !balanced(&tokens) {
        tokens.retain(|token| !matches!(token, Token::Open(_) | Token::Close));
    }
    let mut position = 0;
    sequence(&tokens, &mut position)
}

fn balanced(tokens: &[Token]) -> bool {
    let mut depth = 0i32;
    for token in tokens {
        match token {
            Token::Open(_) => depth += 1,
            Token::Close if depth == 0 => return false,
            Token::Close => depth -= 1,
            _ => {}
        }
    }
    depth == 0
}

fn is_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '[' | ']' | '{' | '}')
}

fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_space(c) {
            i += 1;
            continue;
        }
        // a sign is an operator only right before what it applies to
        let sign = match c {
            '-' => Some(Occur::MustNot),
            '+' => Some(Occur::Must),
            _ => None,
        };
        let signed = sign.is_some()
            && chars.get(i + 1).is_some_and(|&next| next.is_alphanumeric() || next == '"' || next == '(');
        let occur = if signed { sign } else { None };
        let start = if signed { i + 1 } else { i };
        match chars[start] {
            '(' => {
                tokens.push(Token::Open(occur));
                i = start + 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i = start + 1;
            }
            '"' => {
                let (term, end) = quoted(&chars, start, occur, None);
                tokens.extend(term.map(Token::Term));
                i = end;
            }
            _ => {
                let mut end = start;
                while end < chars.len() && !is_space(chars[end]) && !matches!(chars[end], '"' | '(' | ')') {
                    end += 1;
                }
                let run: String = chars[start..end].iter().collect();
                // `title:"a phrase"`: the field goes with the phrase after it
                if let Some(field) = run.strip_suffix(':').filter(|f| FIELDS.contains(f))
                    && chars.get(end) == Some(&'"')
                {
                    let (term, after) = quoted(&chars, end, occur, Some(field.to_owned()));
                    tokens.extend(term.map(Token::Term));
                    i = after;
                    continue;
                }
                i = end;
                match run.as_str() {
                    "AND" if occur.is_none() => tokens.push(Token::And),
                    "OR" if occur.is_none() => tokens.push(Token::Or),
                    _ => tokens.extend(bare(&run, occur).map(Token::Term)),
                }
            }
        }
    }
    tokens
}

/// A phrase from the quote at `start` to the next quote or the end of the text, with
/// what may follow the closing quote (`~slop`, `*`, `^boost`); answers where it ends.
fn quoted(chars: &[char], start: usize, occur: Option<Occur>, field: Option<String>) -> (Option<Term>, usize) {
    let close = chars[start + 1..].iter().position(|&c| c == '"').map(|p| start + 1 + p);
    let text: String = chars[start + 1..close.unwrap_or(chars.len())].iter().collect();
    let mut term = Term { occur, field, text, quoted: true, slop: 0, prefix: false, boost: None };
    let Some(close) = close else { return (has_word(&term.text).then_some(term), chars.len()) };
    let mut end = close + 1;
    while end < chars.len() && !is_space(chars[end]) && !matches!(chars[end], '"' | '(' | ')') {
        end += 1;
    }
    let suffix: String = chars[close + 1..end].iter().collect();
    let (suffix, boost) = split_boost(&suffix);
    term.boost = boost;
    if let Some(slop) = suffix.strip_prefix('~').and_then(|s| s.parse::<u32>().ok()) {
        term.slop = slop.min(16);
    } else if suffix == "*" {
        term.prefix = true;
    }
    (has_word(&term.text).then_some(term), end)
}

/// A run of characters that is not a phrase.
fn bare(run: &str, occur: Option<Occur>) -> Option<Term> {
    let (run, boost) = split_boost(run);
    let (field, text) = match run.split_once(':') {
        Some((field, rest)) if FIELDS.contains(&field) && has_word(rest) => (Some(field.to_owned()), rest),
        _ => (None, run),
    };
    has_word(text).then(|| Term { occur, field, text: text.to_owned(), quoted: false, slop: 0, prefix: false, boost })
}

/// `word^2.5` → (`word`, 2.5); anything else after a `^` is part of the word.
fn split_boost(run: &str) -> (&str, Option<f64>) {
    match run.rsplit_once('^') {
        Some((head, boost)) if !head.is_empty() => match boost.parse::<f64>() {
            Ok(boost) if boost.is_finite() && boost > 0.0 => (head, Some(boost.min(100.0))),
            _ => (run, None),
        },
        _ => (run, None),
    }
}

fn has_word(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

fn leaf(term: &Term) -> UserInputAst {
    let literal = UserInputLiteral {
        field_name: term.field.clone(),
        phrase: term.text.clone(),
        delimiter: if term.quoted { Delimiter::DoubleQuotes } else { Delimiter::None },
        slop: term.slop,
        prefix: term.prefix,
    };
    let ast = UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(literal)));
    match term.boost {
        Some(boost) => UserInputAst::Boost(Box::new(ast), boost.into()),
        None => ast,
    }
}

/// Terms and groups up to a closing bracket or the end: `OR` splits them into
/// alternatives, `AND` makes its two neighbours required.
fn sequence(tokens: &[Token], position: &mut usize) -> Option<UserInputAst> {
    let mut alternatives: Vec<Vec<(Option<Occur>, UserInputAst)>> = Vec::new();
    let mut current: Vec<(Option<Occur>, UserInputAst)> = Vec::new();
    let mut and_pending = false;
    while let Some(token) = tokens.get(*position) {
        *position += 1;
        let next_is_operand = matches!(tokens.get(*position), Some(Token::Term(_) | Token::Open(_)));
        let (occur, ast) = match token {
            Token::Close => break,
            Token::And if !current.is_empty() && next_is_operand => {
                and_pending = true;
                continue;
            }
            Token::Or if !current.is_empty() && next_is_operand => {
                alternatives.push(std::mem::take(&mut current));
                and_pending = false;
                continue;
            }
            Token::And | Token::Or => {
                let word = if *token == Token::And { "AND" } else { "OR" };
                let term = Term {
                    occur: None,
                    field: None,
                    text: word.to_owned(),
                    quoted: false,
                    slop: 0,
                    prefix: false,
                    boost: None,
                };
                (None, leaf(&term))
            }
            Token::Term(term) => (term.occur, leaf(term)),
            Token::Open(occur) => match sequence(tokens, position) {
                Some(group) => (*occur, group),
                None => continue,
            },
        };
        let occur = if and_pending {
            if let Some(last) = current.last_mut()
                && last.0.is_none()
            {
                last.0 = Some(Occur::Must);
            }
            and_pending = false;
            occur.or(Some(Occur::Must))
        } else {
            occur
        };
        current.push((occur, ast));
    }
    alternatives.push(current);
    alternatives.retain(|alternative| !alternative.is_empty());
    match alternatives.len() {
        0 => None,
        1 => Some(UserInputAst::Clause(alternatives.pop().expect("one"))),
        _ => Some(UserInputAst::Clause(
            alternatives.into_iter().map(|clauses| (Some(Occur::Should), UserInputAst::Clause(clauses))).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact picture of the parse: `+` must, `-` must not, `?` should, `.` default;
    /// `title:` fields, `"…"` phrases, `~n` slop, `*` prefix, `^b` boost, `( )` groups.
    fn show(ast: &UserInputAst) -> String {
        match ast {
            UserInputAst::Clause(clauses) => {
                let inner: Vec<String> = clauses
                    .iter()
                    .map(|(occur, ast)| {
                        let sign = match occur {
                            Some(Occur::Must) => "+",
                            Some(Occur::MustNot) => "-",
                            Some(Occur::Should) => "?",
                            None => "",
                        };
                        format!("{sign}{}", show(ast))
                    })
                    .collect();
                format!("({})", inner.join(" "))
            }
            UserInputAst::Boost(ast, boost) => format!("{}^{}", show(ast), boost.0),
            UserInputAst::Leaf(leaf) => match leaf.as_ref() {
                UserInputLeaf::Literal(l) => {
                    let field = l.field_name.as_ref().map(|f| format!("{f}:")).unwrap_or_default();
                    let body = match l.delimiter {
                        Delimiter::DoubleQuotes => format!("\"{}\"", l.phrase),
                        _ => l.phrase.clone(),
                    };
                    let slop = if l.slop > 0 { format!("~{}", l.slop) } else { String::new() };
                    let prefix = if l.prefix { "*" } else { "" };
                    format!("{field}{body}{slop}{prefix}")
                }
                other => format!("{other:?}"),
            },
        }
    }

    #[test]
    fn what_people_type_parses_into_what_they_mean() {
        let cases = [
            ("plain words", "borrow checker", "(borrow checker)"),
            ("free dash", "Log - This", "(Log This)"),
            ("em dash", "Log — This is an activity", "(Log This is an activity)"),
            ("dash inside a word", "e-mail Log—This", "(e-mail Log—This)"),
            ("exclusion right before a word", "rust -garbage", "(rust -garbage)"),
            ("a requirement", "+rust memory", "(+rust memory)"),
            ("a dash at the end", "rust -", "(rust)"),
            ("quote left open", "\"borrow checker", "(\"borrow checker\")"),
            ("a lone quote", "rust \"", "(rust)"),
            ("phrase with slop and boost", "\"data races\"~2^3", "(\"data races\"~2^3)"),
            ("phrase prefix", "\"big bad wo\"*", "(\"big bad wo\"*)"),
            ("excluded phrase", "-\"data races\"", "(-\"data races\")"),
            ("unbalanced bracket", "(rust memory", "(rust memory)"),
            ("stray closing bracket", "rust) memory", "(rust memory)"),
            ("square brackets are spaces", "[draft] notes", "(draft notes)"),
            ("balanced group", "rust -(garbage collector)", "(rust -(garbage collector))"),
            ("colon as punctuation", "Note: call Bob at 12:30", "(Note: call Bob at 12:30)"),
            ("field target", "title:borrowing tags:rust", "(title:borrowing tags:rust)"),
            ("field with a phrase", "title:\"the borrow\"", "(title:\"the borrow\")"),
            ("unknown field is a word", "author:alice", "(author:alice)"),
            ("AND combines", "cats AND dogs", "(+cats +dogs)"),
            ("OR alternates", "cats OR dogs", "(?(cats) ?(dogs))"),
            ("AND binds closer", "a AND b OR c", "(?(+a +b) ?(c))"),
            ("AND as a first word", "AND then there were none", "(AND then there were none)"),
            ("OR as a last word", "rock OR", "(rock OR)"),
            ("OR OR", "a OR OR b", "(?(a OR) ?(b))"),
            ("lowercase is a word", "salt and pepper", "(salt and pepper)"),
            ("emoji", "🚀 launch 🎉", "(launch)"),
            ("boost", "rust^2 memory^x", "(rust^2 memory^x)"),
            ("prefix", "runn*", "(runn*)"),
        ];
        for (name, text, expected) in cases {
            let parsed = parse(text).map(|ast| show(&ast)).unwrap_or_default();
            assert_eq!(parsed, expected, "{name}: {text:?}");
        }
    }

    #[test]
    fn text_without_a_word_is_no_query() {
        for text in ["-", "—", " - — ", "\"", "()", "🙂🙃", "AND", "OR", "+", "…", "-(—)"] {
            let parsed = parse(text);
            // a lone AND/OR is a word; nothing else here is
            let expected = matches!(text, "AND" | "OR");
            assert_eq!(parsed.is_some(), expected, "{text:?}: {:?}", parsed.map(|a| show(&a)));
        }
    }
}
