//! A search request as the index runs it: the rules a request must follow, and the
//! tantivy query it becomes.
//!
//! The query text is read by [`language`]: any text is a valid query, and operators
//! (`"phrases"`, `word*` prefixes, `-excluded`, `OR`, `AND`, parentheses,
//! `title:`/`content:`/`tags:` targets and `^boosts`) apply only where they cannot mean
//! anything else; what is left are words. In mode fulltext words are joined with AND by default: a hit
//! contains every word (in any of title, content and tags), as a keyword search
//! should. The full-text side of hybrid joins them with OR by default, plain BM25, so
//! a question or a sentence still finds what shares only some of its words; the
//! request's `operator` chooses either way.
//!
//! tantivy's QueryParser builds every part except single-word prefixes: it accepts
//! `"big bad wo"*` but refuses `wo*` (a phrase prefix needs two terms). So a `word*`
//! leaf of the parsed query is rewritten, before the parser turns it into a query,
//! into one regex leaf `word.*` per searched field, boosted like the field, or the
//! word itself. The regexes match indexed terms, which are stems in title and content:
//! `runn*` finds "runner", and `running*` finds "running" through the word itself,
//! but `runnin*` does not find "running" (indexed as "run").

use std::ops::Bound;

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use tantivy::query::{BooleanQuery, ConstScoreQuery, EmptyQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::query_grammar::{Delimiter, UserInputAst, UserInputLeaf, UserInputLiteral};
use tantivy::schema::IndexRecordOption;
use tantivy::{Index, Term};

use crate::document::Fields;

mod language;

pub const TITLE_BOOST: f32 = 2.0;
pub const TAGS_BOOST: f32 = 1.5;
pub const CONTENT_BOOST: f32 = 1.0;
pub const DEFAULT_LIMIT: u32 = 10;
pub const MAX_LIMIT: u32 = 100;
/// How deep pages may reach: the collector keeps offset + limit hits in memory.
pub const MAX_DEPTH: usize = 10_000;
const MAX_QUERY_CHARS: usize = 4096;
pub const DEFAULT_VECTOR_WEIGHT: f64 = 0.5;

/// How a search ranks: by the query's words, by its meaning, or both fused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BM25 over title, content and tags
    Fulltext,
    /// cosine similarity of embeddings
    Semantic,
    /// reciprocal rank fusion of the two lists
    Hybrid,
}

impl Mode {
    /// Empty means hybrid; `vector` is the contract's older name of semantic.
    pub fn parse(mode: &str) -> Result<Self> {
        match mode {
            "" | "hybrid" => Ok(Mode::Hybrid),
            "fulltext" => Ok(Mode::Fulltext),
            "semantic" | "vector" => Ok(Mode::Semantic),
            other => Err(Error::invalid(
                "invalid_mode",
                format!(
                    "mode must be fulltext, semantic or hybrid, not {:?}",
                    other.chars().take(32).collect::<String>()
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Fulltext => "fulltext",
            Mode::Semantic => "semantic",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// How the words of the query combine in full text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// every word must match (what a keyword search expects)
    And,
    /// any word may match, more matches rank higher (plain BM25: what a question or a
    /// sentence needs)
    Or,
}

impl Operator {
    /// Empty means the mode's default: `and` for fulltext, `or` inside hybrid.
    pub fn parse(operator: &str, mode: Mode) -> Result<Self> {
        match operator.to_ascii_lowercase().as_str() {
            "" if mode == Mode::Fulltext => Ok(Operator::And),
            "" => Ok(Operator::Or),
            "and" => Ok(Operator::And),
            "or" => Ok(Operator::Or),
            _ => Err(Error::invalid("invalid_operator", "operator must be and or or")),
        }
    }
}

/// One search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub text: String,
    pub mode: Mode,
    pub operator: Operator,
    /// weight of the vector list in hybrid fusion, 0.0..=1.0 (0.5: both alike)
    pub vector_weight: f64,
    /// any of these; empty means every namespace
    pub namespaces: Vec<String>,
    /// any of these; empty means every kind
    pub kinds: Vec<String>,
    /// every one of these
    pub tags: Vec<String>,
    pub limit: usize,
    pub offset: usize,
    pub min_score: Option<f64>,
    pub highlight: bool,
    /// only nodes updated strictly after this time
    pub updated_after: Option<DateTime<Utc>>,
    /// only nodes updated strictly before this time
    pub updated_before: Option<DateTime<Utc>>,
}

impl SearchQuery {
    /// Checks a request: a query of some words, known namespaces, a page within reach.
    /// A limit of 0 means [`DEFAULT_LIMIT`]; a larger one than [`MAX_LIMIT`] is capped.
    /// The cursor is the offset of the page's first hit, as decimal text.
    pub fn new(text: String, limit: u32, cursor: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Err(Error::invalid("empty_query", "query must not be empty"));
        }
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(Error::invalid("query_too_long", format!("query is longer than {MAX_QUERY_CHARS} characters")));
        }
        let limit = match limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        } as usize;
        let offset = match cursor {
            "" => 0,
            cursor => cursor
                .parse::<usize>()
                .map_err(|_| Error::invalid("invalid_cursor", "cursor is not one this server issued"))?,
        };
        if offset + limit > MAX_DEPTH {
            return Err(Error::invalid("invalid_cursor", format!("search pages reach at most {MAX_DEPTH} hits deep")));
        }
        Ok(Self {
            text,
            mode: Mode::Hybrid,
            operator: Operator::Or,
            vector_weight: DEFAULT_VECTOR_WEIGHT,
            namespaces: Vec::new(),
            kinds: Vec::new(),
            tags: Vec::new(),
            limit,
            offset,
            min_score: None,
            highlight: false,
            updated_after: None,
            updated_before: None,
        })
    }

    pub fn namespaces(mut self, namespaces: Vec<String>) -> Result<Self> {
        for namespace in &namespaces {
            helix_core::node::validate_namespace(namespace)?;
        }
        self.namespaces = namespaces;
        Ok(self)
    }
}

/// Turns query text and filters into tantivy queries over one index.
pub struct QueryBuilder {
    /// words joined by AND
    all: QueryParser,
    /// words joined by OR
    any: QueryParser,
    fields: Fields,
}

impl QueryBuilder {
    pub fn new(index: &Index, fields: Fields) -> Self {
        let parser = |conjunction: bool| {
            let mut parser = QueryParser::for_index(index, vec![fields.title, fields.content, fields.tags]);
            if conjunction {
                parser.set_conjunction_by_default();
            }
            parser.set_field_boost(fields.title, TITLE_BOOST);
            parser.set_field_boost(fields.tags, TAGS_BOOST);
            parser.set_field_boost(fields.content, CONTENT_BOOST);
            // only for the prefix rewrite below: regexes users write are searched as words
            parser.allow_regexes();
            parser
        };
        Self { all: parser(true), any: parser(false), fields }
    }

    /// The scored part of a search: the user's query text.
    pub fn text(&self, text: &str, operator: Operator) -> Box<dyn Query> {
        let parser = match operator {
            Operator::And => &self.all,
            Operator::Or => &self.any,
        };
        // text without a single word (a dash, an emoji) finds nothing by words
        let Some(ast) = language::parse(text) else { return Box::new(EmptyQuery) };
        let (query, errors) = parser.build_query_from_user_input_ast_lenient(self.rewrite(ast));
        if !errors.is_empty() {
            tracing::debug!(?errors, "parts of the query text were dropped");
        }
        query
    }

    /// `text` restricted to live documents matching the filters. Filters score nothing:
    /// the ranking is the text's BM25 alone.
    pub fn filtered(&self, text: Box<dyn Query>, search: &SearchQuery) -> Box<dyn Query> {
        let f = &self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, text), filter(term(f.live_term()))];
        if !search.namespaces.is_empty() {
            clauses.push(filter(any_of(search.namespaces.iter().map(|ns| Term::from_field_text(f.namespace, ns)))));
        }
        if !search.kinds.is_empty() {
            clauses.push(filter(any_of(search.kinds.iter().map(|kind| Term::from_field_text(f.kind, kind)))));
        }
        for tag in &search.tags {
            clauses.push(filter(term(Term::from_field_text(f.tags, tag))));
        }
        if search.updated_after.is_some() || search.updated_before.is_some() {
            let bound = |t: Option<DateTime<Utc>>| match t {
                Some(t) => Bound::Excluded(Term::from_field_i64(f.updated_at, t.timestamp_micros())),
                None => Bound::Unbounded,
            };
            clauses.push(filter(Box::new(RangeQuery::new(bound(search.updated_after), bound(search.updated_before)))));
        }
        Box::new(BooleanQuery::new(clauses))
    }

    /// Live documents, optionally of one namespace (for counting).
    pub fn live(&self, namespace: Option<&str>) -> Box<dyn Query> {
        let f = &self.fields;
        let mut clauses = vec![filter(term(f.live_term()))];
        if let Some(namespace) = namespace {
            clauses.push(filter(term(Term::from_field_text(f.namespace, namespace))));
        }
        Box::new(BooleanQuery::new(clauses))
    }

    fn rewrite(&self, ast: UserInputAst) -> UserInputAst {
        match ast {
            UserInputAst::Clause(clauses) => {
                UserInputAst::Clause(clauses.into_iter().map(|(occur, ast)| (occur, self.rewrite(ast))).collect())
            }
            UserInputAst::Boost(ast, boost) => UserInputAst::Boost(Box::new(self.rewrite(*ast)), boost),
            UserInputAst::Leaf(leaf) => match *leaf {
                UserInputLeaf::Literal(literal) => self.prefix(literal),
                // a regex typed by a user is searched as text
                UserInputLeaf::Regex { field, pattern } => {
                    UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(UserInputLiteral {
                        field_name: field,
                        phrase: pattern,
                        delimiter: Delimiter::None,
                        slop: 0,
                        prefix: false,
                    })))
                }
                leaf => UserInputAst::Leaf(Box::new(leaf)),
            },
        }
    }

    /// `word*` (a bare word ending in `*`) becomes `word.*` regexes over the searched
    /// fields; any other literal stays as it is.
    fn prefix(&self, literal: UserInputLiteral) -> UserInputAst {
        let word = literal.phrase.trim_end_matches('*');
        let is_prefix = literal.delimiter == Delimiter::None
            && (literal.prefix || literal.phrase.ends_with('*'))
            && !word.is_empty()
            && word.chars().all(char::is_alphanumeric);
        let targets: Vec<(&str, f32, bool)> = [
            ("title", TITLE_BOOST, true),
            ("content", CONTENT_BOOST, true),
            // tags are matched as written, case included
            ("tags", TAGS_BOOST, false),
        ]
        .into_iter()
        .filter(|(name, ..)| literal.field_name.as_deref().is_none_or(|f| f == *name))
        .collect();
        if !is_prefix || targets.is_empty() {
            return UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(literal)));
        }
        let mut leaves: Vec<UserInputAst> = targets
            .into_iter()
            .map(|(name, boost, lowercase)| {
                let stem = if lowercase { word.to_lowercase() } else { word.to_owned() };
                let regex = UserInputAst::Leaf(Box::new(UserInputLeaf::Regex {
                    field: Some(name.to_owned()),
                    pattern: format!("{stem}.*"),
                }));
                if boost == 1.0 { regex } else { UserInputAst::Boost(Box::new(regex), f64::from(boost).into()) }
            })
            .collect();
        // Title and content hold stems ("running" is indexed as "run"): the word itself,
        // stemmed like any word, keeps `running*` finding what `running` finds.
        let word = word.to_owned();
        leaves.push(UserInputAst::Leaf(Box::new(UserInputLiteral { phrase: word, prefix: false, ..literal }.into())));
        UserInputAst::Clause(leaves.into_iter().map(|leaf| (Some(Occur::Should), leaf)).collect())
    }
}

fn term(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

fn any_of(terms: impl Iterator<Item = Term>) -> Box<dyn Query> {
    Box::new(BooleanQuery::new(terms.map(|t| (Occur::Should, term(t))).collect()))
}

/// A required clause that adds nothing to the score.
fn filter(query: Box<dyn Query>) -> (Occur, Box<dyn Query>) {
    (Occur::Must, Box::new(ConstScoreQuery::new(query, 0.0)))
}

#[cfg(test)]
mod tests {
    use tantivy::collector::TopDocs;
    use tantivy::{Index, TantivyDocument};

    use super::*;
    use crate::document::Document;

    fn index(docs: &[(&str, &str, &[&str])]) -> (Index, Fields) {
        let (schema, fields) = Fields::schema();
        let index = Index::create_in_ram(schema);
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for (i, (title, content, tags)) in docs.iter().enumerate() {
            let doc = Document {
                id: format!("{i}"),
                namespace: "default".to_owned(),
                kind: "note".to_owned(),
                title: (*title).to_owned(),
                content: (*content).to_owned(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                source: String::new(),
                importance: 0.5,
                metadata_json: "{}".to_owned(),
                created_at: Utc::now(),
                updated_at: Utc::now(),
                version: 1,
                embedding: None,
            };
            writer.add_document(fields.document_of(&doc)).unwrap();
        }
        writer.commit().unwrap();
        (index, fields)
    }

    /// The titles a query finds, best first.
    fn titles(index: &Index, fields: Fields, text: &str, operator: Operator) -> Vec<String> {
        let builder = QueryBuilder::new(index, fields);
        let search = SearchQuery::new(text.to_owned(), 10, "").unwrap();
        let query = builder.filtered(builder.text(text, operator), &search);
        let searcher = index.reader().unwrap().searcher();
        let hits = searcher.search(&query, &TopDocs::with_limit(10).order_by_score()).unwrap();
        hits.into_iter()
            .map(|(_, address)| {
                let doc: TantivyDocument = searcher.doc(address).unwrap();
                fields.read(&doc).title
            })
            .collect()
    }

    #[test]
    fn pasted_and_typed_queries_find_what_a_person_expects() {
        let (index, fields) = index(&[
            ("Log — This is an activity log", "what happened today, entry by entry", &["journal"]),
            ("Borrowing", "The borrow checker rules out data races at compile time", &["rust"]),
            ("Garbage collection", "A garbage collector frees memory at run time", &["gc"]),
            ("Cats and dogs", "Pets: cats, dogs and the e-mail from the vet at 12:30", &["pets"]),
            ("Rock AND Roll", "music history 🎸", &["music"]),
        ]);
        let all = Operator::And;
        let cases: [(&str, Operator, &[&str]); 18] = [
            ("Log — This is an activity", all, &["Log — This is an activity log"]),
            ("Log - This", all, &["Log — This is an activity log"]),
            ("Log – This", all, &["Log — This is an activity log"]),
            ("\"borrow checker", all, &["Borrowing"]),
            ("(borrow checker", all, &["Borrowing"]),
            ("data races]", all, &["Borrowing"]),
            ("Pets: cats", all, &["Cats and dogs"]),
            ("vet at 12:30", all, &["Cats and dogs"]),
            ("e-mail", all, &["Cats and dogs"]),
            ("Rock AND Roll", all, &["Rock AND Roll"]),
            ("cats OR collector", all, &["Garbage collection", "Cats and dogs"]),
            ("memory -garbage", all, &[]),
            ("time -garbage", all, &["Borrowing"]),
            ("time - garbage", all, &["Garbage collection"]),
            ("🎸 music", all, &["Rock AND Roll"]),
            ("🎸", all, &[]),
            ("title:borrowing", all, &["Borrowing"]),
            ("AND then music", Operator::Or, &["Rock AND Roll", "Cats and dogs"]),
        ];
        for (text, operator, expected) in cases {
            let mut found = titles(&index, fields, text, operator);
            let mut expected: Vec<String> = expected.iter().map(|t| (*t).to_owned()).collect();
            found.sort();
            expected.sort();
            assert_eq!(found, expected, "{text:?}");
        }
    }
}
