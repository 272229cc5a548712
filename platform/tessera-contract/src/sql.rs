//! Derived (`sql`) tables: parse the query as DataFusion will (same
//! sqlparser version, generic dialect) and find what it reads and returns.
//!
//! Only a single SELECT is accepted, and it may read only bare table names
//! (the product's own tables, checked by the validator); no table
//! functions, no qualified names, no files or URLs.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Query, SelectItem, SetExpr, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

/// What a derived table's query reads and returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Tables read, by bare name, common table expressions excluded.
    pub reads: Vec<String>,
    /// Output column names, when the query's outermost SELECT names them all.
    pub outputs: Option<Vec<String>>,
}

/// Why a query is refused, and where in its text when the parser says so.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub message: String,
    /// Line and column in the query, from 1.
    pub at: Option<(usize, usize)>,
}

impl From<String> for Problem {
    fn from(message: String) -> Self {
        Self { message, at: None }
    }
}

impl From<&str> for Problem {
    fn from(message: &str) -> Self {
        Self { message: message.to_owned(), at: None }
    }
}

/// The longest derived query, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 << 10;

/// How deeply a derived query may nest (an upper bound from its tokens).
pub const MAX_QUERY_NESTING: usize = 256;

/// Refuses a query too long or nested too deeply to be parsed, planned and
/// dropped safely, from its tokens alone (before any tree is built). The
/// estimate counts, for each open bracket, the tokens since its last comma:
/// a chain of operators nests as deep as it is long, list items are
/// siblings, and chains the parser keeps flat (`a['x']['y']`) count too.
fn check_nesting(sql: &str) -> Result<(), Problem> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    if sql.len() > MAX_QUERY_BYTES {
        return Err(format!("the query is {} bytes, over the limit of {MAX_QUERY_BYTES}: derive in smaller steps", sql.len()).into());
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else { return Ok(()) };
    let mut runs: Vec<usize> = vec![0];
    let mut depth: usize = 0;
    for token in &tokens {
        match token {
            Token::Whitespace(_) => continue,
            Token::LParen | Token::LBracket => {
                runs.push(0);
                depth += 1;
            }
            Token::RParen | Token::RBracket => {
                if runs.len() > 1 {
                    // A closed bracket still counts as one link of its chain.
                    let run = runs.pop().unwrap_or(0);
                    depth = depth.saturating_sub(run);
                    if let Some(outer) = runs.last_mut() {
                        *outer += 1;
                    }
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
        if depth > MAX_QUERY_NESTING {
            return Err(format!(
                "the query nests deeper than {MAX_QUERY_NESTING} levels (long chains of operators count as nesting): split it into steps or CTEs"
            )
            .into());
        }
    }
    Ok(())
}

/// Parses and inspects a derived table's query.
pub fn analyze(sql: &str) -> Result<Analysis, Problem> {
    check_nesting(sql)?;
    let statements =
        Parser::new(&GenericDialect {}).with_recursion_limit(64).try_with_sql(sql).and_then(|mut p| p.parse_statements()).map_err(|e| {
            let text = e.to_string();
            // sqlparser ends its messages with ` at Line: L, Column: C`.
            let at = text.rsplit_once(" at Line: ").and_then(|(_, pos)| {
                let (line, column) = pos.split_once(", Column: ")?;
                Some((line.trim().parse().ok()?, column.trim().parse().ok()?))
            });
            let message = text.rsplit_once(" at Line: ").map_or(text.as_str(), |(m, _)| m);
            let message = message.strip_prefix("sql parser error: ").unwrap_or(message);
            Problem { message: format!("the query does not parse: {message}"), at }
        })?;
    let query = match statements.as_slice() {
        [Statement::Query(q)] => q,
        [] => return Err("the query is empty".into()),
        [_] => {
            return Err("a derived table is a single SELECT; other statements are not allowed".into());
        }
        _ => {
            return Err(format!("a derived table is a single SELECT, found {} statements", statements.len()).into());
        }
    };
    let mut visitor = Relations::default();
    if let ControlFlow::Break(problem) = query.visit(&mut visitor) {
        return Err(problem.into());
    }
    let mut reads: Vec<String> = visitor.tables.into_iter().filter(|t| !visitor.ctes.contains(t)).collect();
    reads.sort();
    reads.dedup();
    Ok(Analysis { reads, outputs: outputs(query) })
}

#[derive(Default)]
struct Relations {
    tables: Vec<String>,
    ctes: Vec<String>,
}

impl Visitor for Relations {
    type Break = String;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        if let Some(with) = &query.with {
            self.ctes.extend(with.cte_tables.iter().map(|c| c.alias.name.value.to_lowercase()));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
        match factor {
            TableFactor::Table { name, args, .. } => {
                if args.is_some() {
                    return ControlFlow::Break(format!(
                        "`{name}(...)` is a table function; a derived table reads only the product's tables"
                    ));
                }
                match name.0.as_slice() {
                    [single] => {
                        let ident = single.to_string();
                        let bare = ident.trim_matches('"').to_lowercase();
                        self.tables.push(bare);
                        ControlFlow::Continue(())
                    }
                    _ => ControlFlow::Break(format!(
                        "`{name}` is a qualified name; a derived table reads only the product's own tables, by bare name"
                    )),
                }
            }
            TableFactor::Function { .. } | TableFactor::TableFunction { .. } | TableFactor::UNNEST { .. } => {
                ControlFlow::Break("table functions are not allowed in a derived table".into())
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

/// The names of the outermost SELECT's columns, if every one has a name.
fn outputs(query: &Query) -> Option<Vec<String>> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_lowercase()),
            SelectItem::UnnamedExpr(Expr::Identifier(id)) => Some(id.value.to_lowercase()),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(ids)) => ids.last().map(|i| i.value.to_lowercase()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_reads_and_outputs() {
        let a =
            analyze("WITH x AS (SELECT * FROM orders) SELECT o.day AS day, COUNT(*) AS n FROM x JOIN lines o ON true GROUP BY 1").unwrap();
        assert_eq!(a.reads, ["lines", "orders"]);
        assert_eq!(a.outputs, Some(vec!["day".into(), "n".into()]));
    }

    #[test]
    fn refuses_what_is_not_a_plain_select() {
        for bad in [
            "DELETE FROM orders",
            "SELECT 1; SELECT 2",
            "SELECT * FROM read_parquet('/etc/passwd')",
            "SELECT * FROM other.orders",
            "SELECT * FROM",
            "",
        ] {
            assert!(analyze(bad).is_err(), "{bad}");
        }
        for deep in [
            format!("SELECT {} AS x FROM t", vec!["1"; 400].join(" + ")),
            format!("SELECT a{} AS x FROM t", "['k']".repeat(400)),
            format!("SELECT {}1{} AS x FROM t", "(".repeat(300), ")".repeat(300)),
            format!("SELECT 1 AS x FROM t WHERE {}", "x > 1 AND ".repeat(20_000)),
        ] {
            assert!(analyze(&deep).is_err_and(|p| p.message.contains("levels") || p.message.contains("bytes")), "{}", &deep[..40]);
        }
    }
}
