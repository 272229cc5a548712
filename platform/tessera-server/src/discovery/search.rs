//! Catalog search: an in-memory inverted index over every product's current
//! contract, ranked, with facets.
//!
//! What is indexed, and how much a match there weighs: the product's name
//! and title most, then tags, domain and owner, then table, column and event
//! names, then descriptions. A query matches a product when every one of its
//! words does (the last word also as a prefix, so that results follow typing).
//! A word's weight in a product grows with how often and where it occurs, and
//! saturates; rarer words count more (IDF).
//!
//! Ten thousand products make a vocabulary of tens of thousands of terms and
//! postings of a few hundred thousand entries: a search is a few posting-list
//! merges, well under a millisecond. The index is rebuilt per product when
//! its current version changes (see [`super::Discovery`]).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tessera_contract::Contract;

/// Where a word was found, as the results name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Field {
    Name = 1,
    Title = 2,
    Tag = 4,
    Domain = 8,
    Owner = 16,
    Table = 32,
    Column = 64,
    Event = 128,
    Description = 256,
}

impl Field {
    const ALL: [Field; 9] =
        [Field::Name, Field::Title, Field::Tag, Field::Domain, Field::Owner, Field::Table, Field::Column, Field::Event, Field::Description];

    fn weight(self) -> f32 {
        match self {
            Field::Name => 10.0,
            Field::Title => 8.0,
            Field::Tag => 6.0,
            Field::Domain => 5.0,
            Field::Owner => 4.0,
            Field::Table => 4.0,
            Field::Column => 3.0,
            Field::Event => 2.0,
            Field::Description => 1.0,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Title => "title",
            Field::Tag => "tags",
            Field::Domain => "domain",
            Field::Owner => "owner",
            Field::Table => "tables",
            Field::Column => "columns",
            Field::Event => "events",
            Field::Description => "description",
        }
    }
}

/// A product as search shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub domain: String,
    pub name: String,
    pub title: String,
    pub description: String,
    pub version: String,
    pub status: String,
    pub owner: String,
    pub tags: Vec<String>,
    pub tables: Vec<String>,
}

/// One result: the product, its score, and where the query matched.
#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    #[serde(flatten)]
    pub hit: Hit,
    pub score: f32,
    pub matched_in: Vec<&'static str>,
}

/// Narrows results to products with these values (all must hold).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub domain: Option<String>,
    pub tag: Option<String>,
    pub status: Option<String>,
    pub owner: Option<String>,
}

/// A count of results per value of one facet.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FacetCount {
    pub value: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Facets {
    pub domain: Vec<FacetCount>,
    pub tag: Vec<FacetCount>,
    pub status: Vec<FacetCount>,
    pub owner: Vec<FacetCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub query: String,
    /// Products that match, before `offset` and `limit`.
    pub total: usize,
    pub results: Vec<Ranked>,
    pub facets: Facets,
}

/// One posting: a product, the (saturated) weight of the term in it, and
/// the fields it occurs in.
#[derive(Debug, Clone, Copy)]
struct Posting {
    doc: u32,
    weight: f32,
    fields: u16,
}

/// The index. Immutable once built; [`Index::build`] makes a new one.
#[derive(Debug, Default)]
pub struct Index {
    hits: Vec<Hit>,
    /// Term → postings, ordered by product.
    postings: HashMap<String, Vec<Posting>>,
    /// Every term, sorted, for prefix matching.
    terms: Vec<String>,
}

/// Lowercase words of letters and digits. `customer_email` gives
/// `customer_email`, `customer` and `email`; `e-commerce` gives `e`,
/// `commerce` and `ecommerce`.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '(' | ')' | '[' | ']' | '"' | '\'' | '/')) {
        let lower = chunk.to_lowercase();
        let parts: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|p| !p.is_empty()).collect();
        if parts.len() > 1 {
            out.push(parts.concat());
            let joined: String = lower.trim_matches(|c: char| !c.is_alphanumeric()).to_owned();
            if joined.chars().all(|c| c.is_alphanumeric() || c == '_') {
                out.push(joined);
            }
        }
        out.extend(parts.into_iter().map(str::to_owned));
    }
    out.sort();
    out.dedup();
    out
}

impl Hit {
    pub fn of(contract: &Contract) -> Self {
        Hit {
            domain: contract.domain.to_string(),
            name: contract.name.to_string(),
            title: contract.title.clone(),
            description: contract.description.clone().unwrap_or_default(),
            version: contract.version.to_string(),
            status: contract.status.as_str().to_owned(),
            owner: contract.owner.team.clone(),
            tags: contract.tags.clone(),
            tables: contract.tables.keys().map(ToString::to_string).collect(),
        }
    }
}

/// The text of a contract by field.
fn fields_of(contract: &Contract) -> Vec<(Field, String)> {
    let mut f = vec![
        (Field::Name, contract.name.to_string()),
        (Field::Title, contract.title.clone()),
        (Field::Domain, contract.domain.to_string()),
        (Field::Owner, contract.owner.team.clone()),
        (Field::Owner, contract.owner.contact.clone()),
    ];
    f.extend(contract.tags.iter().map(|t| (Field::Tag, t.clone())));
    if let Some(d) = &contract.description {
        f.push((Field::Description, d.clone()));
    }
    for (name, table) in &contract.tables {
        f.push((Field::Table, name.to_string()));
        if let Some(d) = &table.description {
            f.push((Field::Description, d.clone()));
        }
        for (column, spec) in &table.columns {
            f.push((Field::Column, column.to_string()));
            if let Some(d) = &spec.description {
                f.push((Field::Description, d.clone()));
            }
        }
    }
    for (name, event) in &contract.events {
        f.push((Field::Event, name.to_string()));
        if let Some(d) = &event.description {
            f.push((Field::Description, d.clone()));
        }
    }
    f
}

impl Index {
    /// Indexes these contracts (one per product).
    pub fn build<'a>(contracts: impl IntoIterator<Item = &'a Contract>) -> Self {
        let mut hits = Vec::new();
        let mut postings: HashMap<String, Vec<Posting>> = HashMap::new();
        for contract in contracts {
            let doc = u32::try_from(hits.len()).unwrap_or(u32::MAX);
            hits.push(Hit::of(contract));
            let mut raw: HashMap<String, (f32, u16)> = HashMap::new();
            for (field, text) in fields_of(contract) {
                for word in words(&text) {
                    let e = raw.entry(word).or_default();
                    e.0 += field.weight();
                    e.1 |= field as u16;
                }
            }
            for (term, (weight, fields)) in raw {
                // Saturates: a word repeated in every column description does not swamp the name.
                let weight = weight * 2.0 / (weight + 2.0) * (1.0 + weight.ln_1p() / 4.0);
                postings.entry(term).or_default().push(Posting { doc, weight, fields });
            }
        }
        let mut terms: Vec<String> = postings.keys().cloned().collect();
        terms.sort_unstable();
        Index { hits, postings, terms }
    }

    pub fn len(&self) -> usize {
        self.hits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    /// The products matching `query` and `filters`, best first.
    pub fn search(&self, query: &str, filters: &Filters, offset: usize, limit: usize) -> Results {
        let n = self.hits.len() as f32;
        let mut query_words = query_words(query);
        query_words.truncate(MAX_WORDS);
        // doc → (score, fields, words matched)
        let mut scores: HashMap<u32, (f32, u16, usize)> = HashMap::new();
        for (i, word) in query_words.iter().enumerate() {
            let last = i + 1 == query_words.len();
            let mut per_doc: HashMap<u32, (f32, u16)> = HashMap::new();
            let mut add = |term: &str, factor: f32| {
                if let Some(list) = self.postings.get(term) {
                    let idf = (1.0 + (n - list.len() as f32 + 0.5) / (list.len() as f32 + 0.5)).ln();
                    for p in list {
                        let e = per_doc.entry(p.doc).or_default();
                        e.0 = e.0.max(idf * p.weight * factor);
                        e.1 |= p.fields;
                    }
                }
            };
            add(word, 1.0);
            if last && word.chars().count() >= 2 {
                for term in self.with_prefix(word).filter(|t| *t != word) {
                    add(term, 0.7);
                }
            }
            for (doc, (score, fields)) in per_doc {
                let e = scores.entry(doc).or_default();
                if e.2 == i {
                    e.0 += score;
                    e.1 |= fields;
                    e.2 += 1;
                }
            }
        }
        let matched: Vec<(u32, f32, u16)> = if query_words.is_empty() {
            (0..self.hits.len()).map(|d| (u32::try_from(d).unwrap_or(u32::MAX), 0.0, 0)).collect()
        } else {
            scores.into_iter().filter(|(_, (_, _, count))| *count == query_words.len()).map(|(d, (s, f, _))| (d, s, f)).collect()
        };
        // Each facet counts the matches under every filter but its own, so
        // that choosing a domain still shows what the other domains hold.
        let facets = self.facets(&matched, filters);
        let mut filtered: Vec<(u32, f32, u16)> =
            matched.into_iter().filter(|(d, _, _)| self.hits.get(*d as usize).is_some_and(|h| filters.admit(h))).collect();
        filtered.sort_by(|a, b| {
            b.1.total_cmp(&a.1).then_with(|| {
                let (ha, hb) = (&self.hits[a.0 as usize], &self.hits[b.0 as usize]);
                (&ha.domain, &ha.name).cmp(&(&hb.domain, &hb.name))
            })
        });
        let total = filtered.len();
        let results = filtered
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(d, score, fields)| Ranked {
                hit: self.hits[d as usize].clone(),
                score: (score * 100.0).round() / 100.0,
                matched_in: Field::ALL.iter().filter(|f| fields & (**f as u16) != 0).map(|f| f.as_str()).collect(),
            })
            .collect();
        Results { query: query.to_owned(), total, results, facets }
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        let start = self.terms.partition_point(|t| t.as_str() < prefix);
        self.terms[start..].iter().take_while(move |t| t.starts_with(prefix))
    }

    fn facets(&self, matched: &[(u32, f32, u16)], filters: &Filters) -> Facets {
        let mut domain = BTreeMap::<&str, usize>::new();
        let mut tag = BTreeMap::<&str, usize>::new();
        let mut status = BTreeMap::<&str, usize>::new();
        let mut owner = BTreeMap::<&str, usize>::new();
        let without = |f: fn(&mut Filters)| {
            let mut other = filters.clone();
            f(&mut other);
            other
        };
        let (no_domain, no_tag) = (without(|f| f.domain = None), without(|f| f.tag = None));
        let (no_status, no_owner) = (without(|f| f.status = None), without(|f| f.owner = None));
        for (d, _, _) in matched {
            let h = &self.hits[*d as usize];
            if no_domain.admit(h) {
                *domain.entry(&h.domain).or_default() += 1;
            }
            if no_status.admit(h) {
                *status.entry(&h.status).or_default() += 1;
            }
            if no_owner.admit(h) {
                *owner.entry(&h.owner).or_default() += 1;
            }
            if no_tag.admit(h) {
                for t in &h.tags {
                    *tag.entry(t).or_default() += 1;
                }
            }
        }
        Facets { domain: top(domain), tag: top(tag), status: top(status), owner: top(owner) }
    }
}

/// The most frequent values first, at most 50.
fn top(counts: BTreeMap<&str, usize>) -> Vec<FacetCount> {
    let mut v: Vec<FacetCount> = counts.into_iter().map(|(value, count)| FacetCount { value: value.to_owned(), count }).collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    v.truncate(50);
    v
}

/// The words of a query, in order, each once. An identifier
/// (`customer_email`) stays one word, as it is indexed whole; anything else
/// splits at punctuation (`sales/orders`, `sales.orders.orders`,
/// `e-commerce`), and every part must match.
fn query_words(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for chunk in query.split_whitespace() {
        let lower = chunk.to_lowercase();
        let trimmed = lower.trim_matches(|c: char| !c.is_alphanumeric());
        let parts: Vec<&str> = if trimmed.chars().all(|c| c.is_alphanumeric() || c == '_') {
            vec![trimmed]
        } else {
            trimmed.split(|c: char| !c.is_alphanumeric()).collect()
        };
        for word in parts.into_iter().filter(|w| !w.is_empty()) {
            if !out.iter().any(|o| o == word) {
                out.push(word.to_owned());
            }
        }
    }
    out
}

/// At most this many words of a query count.
pub const MAX_WORDS: usize = 16;

impl Filters {
    fn admit(&self, hit: &Hit) -> bool {
        self.domain.as_ref().is_none_or(|d| &hit.domain == d)
            && self.status.as_ref().is_none_or(|s| &hit.status == s)
            && self.owner.as_ref().is_none_or(|o| &hit.owner == o)
            && self.tag.as_ref().is_none_or(|t| hit.tags.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(domain: &str, name: &str, tags: &[&str], description: &str, columns: &[&str]) -> Contract {
        let columns: String = columns.iter().map(|c| format!("      {c}: {{ type: string }}\n")).collect();
        let yaml = format!(
            "domain: {domain}\nname: {name}\nversion: 1.0.0\ntitle: {name} title\ndescription: {description}\n\
             owner: {{ team: {domain}-team, contact: {domain}@example.com }}\ntags: [{}]\nstatus: active\n\
             events:\n  Happened:\n    version: 1\n    schema: {{ type: object, properties: {{ id: {{ type: string }} }} }}\n\
             tables:\n  things:\n    append:\n      from:\n        Happened:\n          set: {{ id: payload.id }}\n    columns:\n      id: {{ type: string }}\n{columns}",
            tags.join(", ")
        );
        let linted = tessera_contract::lint(&yaml, &tessera_contract::Policy::builtin());
        linted.contract.unwrap_or_else(|| panic!("{yaml}\n{:?}", linted.diagnostics))
    }

    #[test]
    fn words_split_and_join_identifiers() {
        assert_eq!(words("customer_email"), vec!["customer", "customer_email", "customeremail", "email"]);
        assert_eq!(words("E-Commerce, Orders"), vec!["commerce", "e", "ecommerce", "orders"]);
    }

    #[test]
    fn ranks_names_above_descriptions_and_requires_every_word() {
        let a = contract("sales", "orders", &["revenue"], "Orders of the shop", &["total"]);
        let b = contract("finance", "ledger", &["accounting"], "Booked revenue of orders per day", &["amount"]);
        let c = contract("hr", "people", &["staff"], "Employees", &["email"]);
        let index = Index::build([&a, &b, &c]);
        let r = index.search("orders", &Filters::default(), 0, 10);
        assert_eq!(r.total, 2);
        assert_eq!(r.results[0].hit.name, "orders", "{r:?}");
        assert!(r.results[0].matched_in.contains(&"name"));
        assert_eq!(r.results[1].hit.name, "ledger");
        assert!(r.results[1].matched_in == vec!["description"]);

        let both = index.search("revenue ledger", &Filters::default(), 0, 10);
        assert_eq!(both.results.iter().map(|r| r.hit.name.as_str()).collect::<Vec<_>>(), vec!["ledger"]);
        // The last word is also a prefix.
        let typing = index.search("empl", &Filters::default(), 0, 10);
        assert_eq!(typing.results.iter().map(|r| r.hit.name.as_str()).collect::<Vec<_>>(), vec!["people"]);
        // Columns are found, and said to be.
        let col = index.search("email", &Filters::default(), 0, 10);
        assert_eq!(col.results[0].hit.name, "people");
        assert!(col.results[0].matched_in.contains(&"columns"));
        assert_eq!(index.search("nothing-like-it", &Filters::default(), 0, 10).total, 0);
        // A product's path, as the UI shows it, finds it.
        let path = index.search("sales/orders", &Filters::default(), 0, 10);
        assert_eq!(path.results.iter().map(|r| r.hit.name.as_str()).collect::<Vec<_>>(), vec!["orders"]);
    }

    #[test]
    fn facets_count_the_filtered_results() {
        let a = contract("sales", "orders", &["revenue", "pii"], "x", &[]);
        let b = contract("sales", "returns", &["revenue"], "x", &[]);
        let c = contract("hr", "people", &["pii"], "x", &[]);
        let index = Index::build([&a, &b, &c]);
        let all = index.search("", &Filters::default(), 0, 10);
        assert_eq!(all.total, 3);
        assert_eq!(all.facets.domain, vec![FacetCount { value: "sales".into(), count: 2 }, FacetCount { value: "hr".into(), count: 1 }]);
        let pii = index.search("", &Filters { tag: Some("pii".into()), ..Filters::default() }, 0, 10);
        assert_eq!(pii.total, 2);
        assert_eq!(pii.facets.domain.len(), 2);
        // A facet's own filter does not narrow its counts; the others do.
        let sales = index.search("", &Filters { domain: Some("sales".into()), ..Filters::default() }, 0, 10);
        assert_eq!(sales.total, 2);
        assert_eq!(sales.facets.domain.len(), 2, "{:?}", sales.facets.domain);
        assert_eq!(sales.facets.tag, vec![FacetCount { value: "revenue".into(), count: 2 }, FacetCount { value: "pii".into(), count: 1 }]);
        let sales_pii = index.search("", &Filters { tag: Some("pii".into()), domain: Some("sales".into()), ..Filters::default() }, 0, 10);
        assert_eq!(sales_pii.results.iter().map(|r| r.hit.name.as_str()).collect::<Vec<_>>(), vec!["orders"]);
        // Paging keeps the total.
        let page = index.search("", &Filters::default(), 2, 10);
        assert_eq!((page.total, page.results.len()), (3, 1));
    }
}
