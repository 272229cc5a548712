//! What SQL may do: read, nothing else.
//!
//! A query is parsed once (DataFusion's parser, its PostgreSQL-compatible
//! dialect) and must be exactly one statement of a read-only kind: `SELECT`
//! (with `WITH`, `UNION`, `VALUES`…), `EXPLAIN` of one, `DESCRIBE`, and the
//! `SHOW` statements that list tables and columns. Everything else is refused
//! here, before planning; the plan is checked again by DataFusion's own
//! `SQLOptions` (no DDL, no DML, no statements) as a second wall.
//!
//! The statement is also where `as_of(…)` calls are found, so that the
//! versions they name can be opened (asynchronously) before planning.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{self, FunctionArg, FunctionArgExpr, TableFactor, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use crate::At;

/// Why a query is not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The text is not SQL we can parse.
    Syntax(String),
    /// It is SQL, but not a read.
    NotReadOnly(String),
    /// Over a bound on its size or nesting.
    TooComplex(String),
}

/// How large and how deeply nested a query may be: checked before anything
/// is planned, so that no input can exhaust a thread's stack or the
/// server's memory while it is parsed, planned or run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// The SQL text, in bytes.
    pub max_sql_bytes: usize,
    /// Nesting of expressions, subqueries, set operations and joins.
    pub max_depth: usize,
    /// One string or number literal, in bytes.
    pub max_literal_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { max_sql_bytes: 1 << 20, max_depth: 256, max_literal_bytes: 64 << 10 }
    }
}

/// Checks `sql` against `bounds` without building a syntax tree: its size,
/// then a conservative estimate of its nesting from the tokens. Any text
/// that passes parses into a tree shallow enough to be walked, planned and
/// dropped on an ordinary stack; [`check_depth`] then measures it exactly.
pub fn check_text(sql: &str, bounds: &Bounds) -> Result<(), Refusal> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if sql.len() > bounds.max_sql_bytes {
        return Err(Refusal::TooComplex(format!(
            "the query is {} bytes, over the limit of {} (query_max_sql_bytes): send a shorter query",
            sql.len(),
            bounds.max_sql_bytes
        )));
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().map_err(|e| Refusal::Syntax(clean(&e.to_string())))?;
    // Each open bracket's run of tokens since its last comma: a chain of
    // operators in one list item nests as deep as it is long; items of a
    // list are siblings. The estimate is an upper bound of the tree's depth.
    let ceiling = bounds.max_depth.saturating_mul(16).max(1024);
    let mut runs: Vec<usize> = vec![0];
    let mut depth: usize = 0;
    for token in &tokens {
        match token {
            Token::Whitespace(_) => continue,
            Token::SingleQuotedString(s)
            | Token::DoubleQuotedString(s)
            | Token::NationalStringLiteral(s)
            | Token::EscapedStringLiteral(s)
            | Token::UnicodeStringLiteral(s)
            | Token::HexStringLiteral(s)
            | Token::SingleQuotedByteStringLiteral(s)
            | Token::DoubleQuotedByteStringLiteral(s)
                if s.len() > bounds.max_literal_bytes =>
            {
                return Err(Refusal::TooComplex(format!(
                    "a literal of {} bytes is over the limit of {} bytes per literal: pass large values through tables, not in the query text",
                    s.len(),
                    bounds.max_literal_bytes
                )));
            }
            Token::DollarQuotedString(d) if d.value.len() > bounds.max_literal_bytes => {
                return Err(Refusal::TooComplex(format!(
                    "a literal of {} bytes is over the limit of {} bytes per literal: pass large values through tables, not in the query text",
                    d.value.len(),
                    bounds.max_literal_bytes
                )));
            }
            Token::Number(n, _) if n.len() > bounds.max_literal_bytes => {
                return Err(Refusal::TooComplex(format!("a number literal of {} digits is too long", n.len())));
            }
            Token::LParen | Token::LBracket | Token::LBrace => {
                runs.push(0);
                depth += 1;
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if runs.len() > 1 {
                    let run = runs.pop().unwrap_or(0);
                    depth = depth.saturating_sub(run + 1);
                }
            }
            Token::Comma => {
                if let Some(run) = runs.last_mut() {
                    depth = depth.saturating_sub(*run);
                    *run = 0;
                }
            }
            _ => {
                if let Some(run) = runs.last_mut() {
                    *run += 1;
                    depth += 1;
                }
            }
        }
        if depth > ceiling {
            return Err(too_deep(bounds));
        }
    }
    Ok(())
}

/// Columns under CUBE in one statement (2^12 = 4,096 grouping sets, the
/// planner's own limit).
const MAX_CUBE_COLUMNS: usize = 12;

/// Sets in one GROUPING SETS or ROLLUP.
const MAX_GROUPING_SETS: usize = 4096;

fn too_deep(bounds: &Bounds) -> Refusal {
    Refusal::TooComplex(format!(
        "the query nests deeper than the limit of {} levels (query_max_depth) of expressions, subqueries, set operations and joins \
         (or groups by more than {MAX_CUBE_COLUMNS} columns under CUBE): \
         split long chains of operators (an IN list instead of many ORs), or use a CTE",
        bounds.max_depth
    ))
}

/// Measures the nesting of a parsed statement, stopping as soon as it is
/// over the bound (so the walk itself stays shallow).
pub fn check_depth(statement: &DFStatement, bounds: &Bounds) -> Result<(), Refusal> {
    struct Depth {
        now: usize,
        max: usize,
        /// Columns under CUBE in the statement: their grouping sets multiply.
        cube: usize,
    }
    impl Depth {
        fn enter(&mut self, by: usize) -> ControlFlow<()> {
            self.now += by;
            if self.now > self.max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
    }
    /// Chains the parser keeps flat but the planner nests, one level a link:
    /// `a['x']['y']…`, `a.b.c.d…`, `a->'x'->'y'…`.
    fn links(e: &ast::Expr) -> usize {
        match e {
            ast::Expr::CompoundFieldAccess { access_chain, .. } => access_chain.len(),
            ast::Expr::CompoundIdentifier(parts) => parts.len().saturating_sub(1),
            ast::Expr::JsonAccess { path, .. } => path.path.len(),
            _ => 0,
        }
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &ast::Expr) -> ControlFlow<()> {
            if let ast::Expr::Cube(sets) = e {
                // 2^n grouping sets: the planner enumerates them all before
                // it checks their number.
                self.cube += sets.len();
                if self.cube > MAX_CUBE_COLUMNS {
                    return ControlFlow::Break(());
                }
            }
            if let ast::Expr::GroupingSets(sets) | ast::Expr::Rollup(sets) = e
                && sets.len() > MAX_GROUPING_SETS
            {
                return ControlFlow::Break(());
            }
            self.enter(1 + links(e))
        }
        fn post_visit_expr(&mut self, e: &ast::Expr) -> ControlFlow<()> {
            self.now -= 1 + links(e);
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
            self.enter(1 + set_operations(&q.body))
        }
        fn post_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
            self.now -= 1 + set_operations(&q.body);
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
            self.enter(1)
        }
        fn post_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, _: &ast::ObjectName) -> ControlFlow<()> {
            ControlFlow::Continue(())
        }
    }
    /// Set operations and joins chain left-deep; count them as nesting.
    fn set_operations(body: &ast::SetExpr) -> usize {
        let mut n = 0;
        let mut node = body;
        while let ast::SetExpr::SetOperation { left, .. } = node {
            n += 1;
            node = left;
        }
        if let ast::SetExpr::Select(select) = node {
            n += select.from.iter().map(|t| t.joins.len()).sum::<usize>() + select.from.len().saturating_sub(1);
        }
        n
    }
    let mut depth = Depth { now: 0, max: bounds.max_depth, cube: 0 };
    let flow = match statement {
        DFStatement::Statement(s) => s.visit(&mut depth),
        DFStatement::Explain(e) => return check_depth(&e.statement, bounds),
        _ => ControlFlow::Continue(()),
    };
    match flow {
        ControlFlow::Break(()) => Err(too_deep(bounds)),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The bounds alone, for text another parser will read (the PostgreSQL
/// protocol's, which may hold several statements): the text, then each
/// statement's tree. Text that does not parse here is left to that parser.
pub fn check_bounds(sql: &str, bounds: &Bounds) -> Result<(), Refusal> {
    check_text(sql, bounds)?;
    let dialect = PostgreSqlDialect {};
    let Ok(statements) =
        DFParserBuilder::new(sql).with_dialect(&dialect).with_recursion_limit(64).build().and_then(|mut p| p.parse_statements())
    else {
        return Ok(());
    };
    statements.iter().try_for_each(|s| check_depth(s, bounds))
}

/// [`check`] with the bounds: the text first, then the tree.
pub fn check_bounded(sql: &str, bounds: &Bounds) -> Result<Checked, Refusal> {
    check_text(sql, bounds)?;
    let checked = check(sql)?;
    check_depth(&checked.statement, bounds)?;
    Ok(checked)
}

/// The name of the time-travel table function.
pub const AS_OF: &str = "as_of";

/// One `as_of('domain.product.table', version-or-time)` call.
#[derive(Debug, Clone, PartialEq)]
pub struct AsOf {
    pub table: String,
    pub at: At,
}

impl AsOf {
    /// The key the planner looks the opened table up by.
    pub fn key(table: &str, at: &At) -> String {
        format!("{table}\u{0}{at:?}")
    }
}

/// A statement that may run, and the time-travel reads it makes.
#[derive(Debug)]
pub struct Checked {
    pub statement: DFStatement,
    pub as_of: Vec<AsOf>,
}

/// Parses `sql` and checks that it is one read-only statement.
pub fn check(sql: &str) -> Result<Checked, Refusal> {
    let dialect = PostgreSqlDialect {};
    let mut statements: VecDeque<DFStatement> = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(64)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Refusal::Syntax(clean(&e.to_string())))?;
    let statement = match (statements.pop_front(), statements.is_empty()) {
        (Some(s), true) => s,
        (None, _) => return Err(Refusal::Syntax("the query is empty: send one SELECT statement".into())),
        (Some(_), false) => return Err(Refusal::Syntax("send one statement per query (this text has several)".into())),
    };
    let mut statement = statement;
    let as_of = check_statement(&mut statement)?;
    Ok(Checked { statement, as_of })
}

/// Checks one parsed statement (from another parser, e.g. the PostgreSQL
/// protocol's): read-only, and the `as_of` calls it makes. Those calls are
/// renamed to `as_of` whatever their case (`AS_OF(…)`), the name the
/// planner knows the function by.
pub fn check_statement(statement: &mut DFStatement) -> Result<Vec<AsOf>, Refusal> {
    read_only(statement)?;
    normalize_as_of(statement);
    as_of_calls(statement)
}

fn normalize_as_of(statement: &mut DFStatement) {
    let rename = |name: &mut ast::ObjectName| {
        if name.0.len() == 1 && name.to_string().eq_ignore_ascii_case(AS_OF) {
            *name = ast::ObjectName::from(vec![ast::Ident::new(AS_OF)]);
        }
        ControlFlow::<()>::Continue(())
    };
    match statement {
        DFStatement::Statement(s) => {
            let _ = ast::visit_relations_mut(s.as_mut(), rename);
        }
        DFStatement::Explain(e) => normalize_as_of(&mut e.statement),
        _ => {}
    }
}

fn read_only(statement: &DFStatement) -> Result<(), Refusal> {
    use ast::Statement as S;
    let what = match statement {
        DFStatement::Statement(s) => match s.as_ref() {
            S::Query(_) | S::ShowTables { .. } | S::ShowColumns { .. } | S::ExplainTable { .. } | S::ShowVariable { .. } => return Ok(()),
            S::Explain { statement, .. } => return read_only(&DFStatement::Statement(statement.clone())),
            other => kind_of(other),
        },
        DFStatement::Explain(e) => return read_only(&e.statement),
        DFStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".to_owned(),
        DFStatement::CopyTo(_) => "COPY".to_owned(),
        DFStatement::Reset(_) => "RESET".to_owned(),
    };
    Err(Refusal::NotReadOnly(format!(
        "{what} is not allowed: SQL here is read-only; use SELECT (with WITH, UNION, VALUES…), EXPLAIN, DESCRIBE, SHOW TABLES or SHOW COLUMNS"
    )))
}

/// The statement's kind, as its first words.
fn kind_of(s: &ast::Statement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    let upper: Vec<String> =
        words.iter().take_while(|w| w.chars().all(|c| c.is_ascii_alphabetic() || c == '_')).map(|w| w.to_ascii_uppercase()).collect();
    if upper.is_empty() { "this statement".to_owned() } else { upper.join(" ") }
}

struct AsOfFinder {
    found: Vec<AsOf>,
}

impl Visitor for AsOfFinder {
    type Break = Refusal;

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Refusal> {
        if let TableFactor::Table { name, args: Some(args), .. } = factor
            && name.0.len() == 1
            && name.to_string().eq_ignore_ascii_case(AS_OF)
        {
            match as_of_args(&args.args) {
                Ok(call) => self.found.push(call),
                Err(e) => return ControlFlow::Break(Refusal::Syntax(e)),
            }
        }
        ControlFlow::Continue(())
    }
}

fn as_of_calls(statement: &DFStatement) -> Result<Vec<AsOf>, Refusal> {
    let mut finder = AsOfFinder { found: Vec::new() };
    let flow = match statement {
        DFStatement::Statement(s) => s.visit(&mut finder),
        DFStatement::Explain(e) => return as_of_calls(&e.statement),
        _ => ControlFlow::Continue(()),
    };
    match flow {
        ControlFlow::Break(refusal) => Err(refusal),
        ControlFlow::Continue(()) => Ok(finder.found),
    }
}

const AS_OF_USAGE: &str = "write as_of('domain.product.table', <version number>) or as_of('domain.product.table', '2026-11-25T06:00:00Z')";

fn as_of_args(args: &[FunctionArg]) -> Result<AsOf, String> {
    let exprs: Vec<&ast::Expr> = args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    let [table, at] = exprs.as_slice() else {
        return Err(format!("as_of takes two arguments: {AS_OF_USAGE}"));
    };
    let ast::Expr::Value(ast::ValueWithSpan { value: ast::Value::SingleQuotedString(table), .. }) = table else {
        return Err(format!("as_of's first argument must be the table's name as a string literal: {AS_OF_USAGE}"));
    };
    let at = match at {
        ast::Expr::Value(ast::ValueWithSpan { value: ast::Value::Number(n, _), .. }) => {
            At::Version(n.parse().map_err(|_| format!("`{n}` is not a table version (a whole number from 0): {AS_OF_USAGE}"))?)
        }
        ast::Expr::Value(ast::ValueWithSpan { value: ast::Value::SingleQuotedString(s), .. }) => At::Time(parse_time(s)?),
        ast::Expr::TypedString(ts) => match &ts.value.value {
            ast::Value::SingleQuotedString(s) => At::Time(parse_time(s)?),
            other => return Err(format!("`{other}` is not a time: {AS_OF_USAGE}")),
        },
        other => return Err(format!("as_of's second argument must be a literal version or time, not `{other}`: {AS_OF_USAGE}")),
    };
    Ok(AsOf { table: table.clone(), at })
}

/// A time as `as_of` takes it: RFC 3339, or a date and time without zone
/// (UTC), or a date (its midnight, UTC).
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(format!("`{s}` is not a time: use RFC 3339, e.g. '2026-11-25T06:00:00Z'"))
}

/// DataFusion's parser errors start with its own prefixes; callers want the message.
fn clean(message: &str) -> String {
    message.trim_start_matches("SQL error: ").trim_start_matches("ParserError(\"").trim_end_matches("\")").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        match check(sql) {
            Err(Refusal::NotReadOnly(m)) => m,
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn reads_pass() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a UNION ALL SELECT 2",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SHOW TABLES",
            "SHOW COLUMNS FROM sales.orders.orders",
            "DESCRIBE sales.orders.orders",
        ] {
            check(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
    }

    #[test]
    fn everything_else_is_refused_by_kind() {
        assert!(refused("INSERT INTO t VALUES (1)").starts_with("INSERT INTO"));
        assert!(refused("CREATE TABLE t AS SELECT 1").starts_with("CREATE TABLE"));
        assert!(refused("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc'").starts_with("CREATE EXTERNAL TABLE"));
        assert!(refused("COPY (SELECT 1) TO '/tmp/x.parquet'").starts_with("COPY"));
        assert!(refused("SET datafusion.execution.target_partitions = 1").starts_with("SET"));
        assert!(refused("EXPLAIN DELETE FROM t").starts_with("DELETE"));
        assert!(refused("PREPARE p AS SELECT 1").starts_with("PREPARE"));
        assert!(refused("DROP TABLE t").starts_with("DROP TABLE"));
        assert!(refused("RESET datafusion.execution.batch_size").starts_with("RESET"));
    }

    #[test]
    fn bounds_refuse_what_is_too_large_or_too_deep_before_planning() {
        let bounds = Bounds { max_sql_bytes: 1 << 20, max_depth: 64, max_literal_bytes: 1024 };
        let chain = |n: usize| format!("SELECT {} AS x", vec!["1"; n].join(" + "));
        assert!(check_bounded(&chain(50), &bounds).is_ok());
        assert!(matches!(check_bounded(&chain(70), &bounds), Err(Refusal::TooComplex(m)) if m.contains("64 levels")));
        // Far past the bound: refused from the tokens, without building a tree.
        assert!(matches!(check_text(&chain(300_000), &bounds), Err(Refusal::TooComplex(_))));
        assert!(
            matches!(check_bounded(&format!("SELECT '{}'", "x".repeat(2000)), &bounds), Err(Refusal::TooComplex(m)) if m.contains("literal"))
        );
        assert!(matches!(check_bounded(&"SELECT 1 ".repeat(200_000), &bounds), Err(Refusal::TooComplex(m)) if m.contains("bytes")));
        let unions = vec!["SELECT 1"; 100].join(" UNION ALL ");
        assert!(matches!(check_bounded(&unions, &bounds), Err(Refusal::TooComplex(_))));
        // Chains the parser keeps flat.
        let subscripts = format!("SELECT NULL{} AS x", "['a']".repeat(100));
        assert!(matches!(check_bounded(&subscripts, &bounds), Err(Refusal::TooComplex(_))));
        let cube = format!("SELECT 1 FROM (VALUES (1)) t(a) GROUP BY CUBE({})", vec!["a"; 13].join(", "));
        assert!(matches!(check_bounded(&cube, &bounds), Err(Refusal::TooComplex(_))));
        assert!(matches!(check_bounded(&format!("SELECT $${}$$", "x".repeat(2000)), &bounds), Err(Refusal::TooComplex(_))));
        // Long lists are wide, not deep.
        let list = format!("SELECT 1 WHERE 1 IN ({})", (0..5000).map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
        assert!(check_bounded(&list, &bounds).is_ok());
    }

    #[test]
    fn one_statement_only() {
        assert!(matches!(check("SELECT 1; DROP TABLE t"), Err(Refusal::Syntax(m)) if m.contains("one statement")));
        assert!(matches!(check(""), Err(Refusal::Syntax(_))));
    }

    #[test]
    fn as_of_calls_are_found_with_their_arguments() {
        let c = check("SELECT * FROM as_of('sales.orders.orders', 3) o JOIN as_of('sales.orders.lines', '2026-11-25') l ON true").unwrap();
        assert_eq!(c.as_of.len(), 2);
        assert_eq!(c.as_of[0], AsOf { table: "sales.orders.orders".into(), at: At::Version(3) });
        assert_eq!(c.as_of[1].at, At::Time(parse_time("2026-11-25T00:00:00Z").unwrap()));
        assert!(matches!(check("SELECT * FROM as_of('x', now())"), Err(Refusal::Syntax(m)) if m.contains("literal")));
        // Any case, renamed to the planner's name.
        let c = check("SELECT * FROM AS_OF('sales.orders.orders', 3)").unwrap();
        assert_eq!(c.as_of.len(), 1);
        assert!(c.statement.to_string().contains("as_of('sales.orders.orders', 3)"), "{}", c.statement);
    }
}

/// `sql` as the audit log keeps it: every string literal (quoted, escaped,
/// national, unicode, hex, byte or dollar-quoted) replaced by `'…'`, so
/// that a value a caller typed (an email in a filter, say) is not stored
/// in clear. Identifiers, numbers and the statement's shape stay. Text that
/// does not tokenize is kept only as its length.
pub fn redact_literals(sql: &str) -> String {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return format!("<a statement of {} bytes that does not tokenize>", sql.len());
    };
    let mut out = String::with_capacity(sql.len());
    for token in tokens {
        match token {
            Token::SingleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::DollarQuotedString(_) => out.push_str("'…'"),
            // Comments may hold anything.
            Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)) => out.push(' '),
            other => out.push_str(&other.to_string()),
        }
    }
    out
}

/// `text` with every single-quoted span replaced by `'…'` (for error
/// messages, which quote the values they could not use).
pub fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for c in text.chars() {
        match (c, inside) {
            ('\'', false) => {
                out.push_str("'…'");
                inside = true;
            }
            ('\'', true) => inside = false,
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact_literals;

    #[test]
    fn literals_are_replaced_and_the_rest_kept() {
        assert_eq!(redact_literals("SELECT 42 AS answer"), "SELECT 42 AS answer");
        assert_eq!(
            redact_literals("SELECT customer_id FROM customers.profiles.profiles WHERE email = 'ada@example.com' AND n > 3"),
            "SELECT customer_id FROM customers.profiles.profiles WHERE email = '…' AND n > 3"
        );
        for sql in ["SELECT E'ada\\x40example.com'", "SELECT $$ada@example.com$$", "SELECT N'ada@example.com'", "SELECT X'61'"] {
            let r = redact_literals(sql);
            assert!(!r.contains("ada") && !r.contains("61"), "{sql} -> {r}");
        }
        assert_eq!(redact_literals("SELECT \"email\" FROM t"), "SELECT \"email\" FROM t");
        assert!(!redact_literals("SELECT 1 -- ada@example.com\n/* ada */").contains("ada"));
        assert!(redact_literals("SELECT 'unterminated").starts_with("<a statement of"));
        assert_eq!(super::redact_quoted("cannot cast 'ada@example.com' to Int64"), "cannot cast '…' to Int64");
    }
}
