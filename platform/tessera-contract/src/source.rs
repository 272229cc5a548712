//! The YAML source: text in, a JSON value and the position of every node out.
//!
//! Built directly on yaml-rust2's event parser with an explicit stack, so no
//! input can recurse deeply, and every limit is checked before memory grows:
//! size, nesting depth and node count. YAML features that make documents
//! larger than their text or surprising to read are refused with a clear
//! error: anchors and aliases (and with them "billion laughs" alias bombs),
//! tags, complex keys and several documents in one file. Plain scalars follow
//! the YAML 1.2 core schema (`yes` is a string; `1.0` a number).
//!
//! This module knows nothing of contracts: the policy file uses it too.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diagnostic::{Code, Diagnostic};

/// Inputs larger than this are refused before parsing.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Collections nested deeper than this are refused.
pub const MAX_DEPTH: usize = 64;
/// Documents with more nodes than this are refused.
pub const MAX_NODES: usize = 200_000;

/// A line and column, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn of(marker: &Marker) -> Self {
        Self { line: marker.line().max(1), column: marker.col() + 1 }
    }
}

/// Which part of a mapping entry a diagnostic is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// The key, e.g. an unknown or misspelt key.
    Key,
    /// The value, e.g. a wrong type or a bad reference.
    #[default]
    Value,
}

/// Where each node of a document starts, by JSON pointer.
#[derive(Debug, Clone, Default)]
pub struct SpanMap {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
}

impl SpanMap {
    /// The position of the node at `pointer`, or of its nearest ancestor when
    /// the node does not exist (a missing key is reported at its parent).
    pub fn locate(&self, pointer: &str, target: Target) -> Position {
        let mut pointer = pointer;
        let mut target = target;
        loop {
            let map = match target {
                Target::Key => &self.keys,
                Target::Value => &self.values,
            };
            if let Some(pos) = map.get(pointer).or_else(|| self.values.get(pointer)) {
                return *pos;
            }
            match pointer.rfind('/') {
                Some(i) => {
                    pointer = &pointer[..i];
                    target = Target::Key;
                }
                None => return Position { line: 1, column: 1 },
            }
        }
    }
}

/// A parsed YAML document: its JSON value and where each node stands.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    pub spans: SpanMap,
}

/// Escapes one JSON pointer segment (RFC 6901).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Joins a pointer and a segment.
pub fn child(pointer: &str, segment: &str) -> String {
    format!("{pointer}/{}", escape(segment))
}

enum Frame {
    Sequence { pointer: String, items: Vec<Value> },
    Mapping { pointer: String, map: Map<String, Value>, key: Option<String> },
}

/// Parses YAML text. Returns the document, or every error that prevents
/// reading it (duplicate keys are all reported, a syntax error ends parsing).
pub fn parse(text: &str) -> Result<Document, Vec<Diagnostic>> {
    if text.len() > MAX_BYTES {
        return Err(vec![
            Diagnostic::error(
                Code::YamlTooLarge,
                "",
                format!("the file is {} bytes, more than the {MAX_BYTES} a contract may have", text.len()),
            )
            .help("split the product, or move large payload schemas out of the contract")
            .at(Position { line: 1, column: 1 }),
        ]);
    }
    Loader::default().run(text)
}

/// Decodes bytes as UTF-8 text, with an error naming the first bad byte.
pub fn decode(bytes: &[u8]) -> Result<&str, Box<Diagnostic>> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        Box::new(
            Diagnostic::error(
                Code::YamlEncoding,
                "",
                format!("the file is not UTF-8 text: invalid byte 0x{:02x} at offset {}", bytes[e.valid_up_to()], e.valid_up_to()),
            )
            .help("save the contract as UTF-8; is this the right file?")
            .at(Position { line, column }),
        )
    })
}

#[derive(Default)]
struct Loader {
    stack: Vec<Frame>,
    spans: SpanMap,
    errors: Vec<Diagnostic>,
    root: Option<Value>,
    documents: usize,
    nodes: usize,
}

impl Loader {
    fn run(mut self, text: &str) -> Result<Document, Vec<Diagnostic>> {
        let lines: Vec<&str> = text.lines().collect();
        // The column of the last `marker` before `pos` on its line: where an
        // anchor (`&`) or a tag (`!`) that the parser reports at its node starts.
        let back_to = |pos: Position, marker: char| -> Position {
            let line = lines.get(pos.line - 1).copied().unwrap_or_default();
            let before: String = line.chars().take(pos.column.saturating_sub(1)).collect();
            match before.rfind(marker) {
                Some(byte) => {
                    // The start of the token: `!!str` starts at its first `!`.
                    let start = before[..byte].rfind(char::is_whitespace).map_or(0, |ws| ws + 1);
                    Position { line: pos.line, column: before[..start].chars().count() + 1 }
                }
                None => pos,
            }
        };
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, marker) = match parser.next_token() {
                Ok(token) => token,
                Err(e) => {
                    let pos = Position::of(e.marker());
                    // The scanner has its own depth guard for flow collections.
                    let error = if e.info().contains("recursion limit") {
                        too_deep(pos)
                    } else {
                        Diagnostic::error(Code::YamlSyntax, "", format!("invalid YAML: {}", e.info()))
                            .help("check the indentation and quoting around this position")
                            .at(pos)
                    };
                    self.errors.push(error);
                    return Err(self.errors);
                }
            };
            let pos = Position::of(&marker);
            let is_map = matches!(event, Event::MappingStart(..));
            let fatal = match event {
                Event::StreamEnd => break,
                Event::Nothing | Event::StreamStart | Event::DocumentEnd => None,
                Event::DocumentStart => {
                    self.documents += 1;
                    (self.documents > 1).then(|| {
                        Diagnostic::error(Code::YamlMultipleDocuments, "", "the file holds more than one YAML document")
                            .help("a contract is one document: remove the second `---` and what follows, or split the file")
                            .at(pos)
                    })
                }
                Event::Alias(_) => Some(anchor_error(pos, "an alias (`*name`)")),
                Event::Scalar(text, style, anchor, tag) => {
                    if anchor > 0 {
                        Some(anchor_error(back_to(pos, '&'), "an anchor (`&name`)"))
                    } else if tag.is_some() {
                        Some(tag_error(back_to(pos, '!')))
                    } else {
                        self.scalar(text, style, pos)
                    }
                }
                Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) => {
                    if anchor > 0 {
                        Some(anchor_error(back_to(pos, '&'), "an anchor (`&name`)"))
                    } else if tag.is_some() {
                        Some(tag_error(back_to(pos, '!')))
                    } else {
                        self.open(is_map, pos)
                    }
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    self.close();
                    None
                }
            };
            if let Some(error) = fatal {
                self.errors.push(error);
                return Err(self.errors);
            }
        }
        let root = match self.root.take() {
            Some(root) => root,
            None => {
                self.errors.push(
                    Diagnostic::error(Code::YamlSyntax, "", "the file is empty")
                        .help("a contract starts with `domain:`, `name:` and `version:`; see contracts/README.md")
                        .at(Position { line: 1, column: 1 }),
                );
                return Err(self.errors);
            }
        };
        if self.errors.is_empty() { Ok(Document { value: root, spans: self.spans }) } else { Err(self.errors) }
    }

    /// The pointer the next value will have, or `None` when it is a key.
    fn next_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Sequence { pointer, items }) => Some(format!("{pointer}/{}", items.len())),
            Some(Frame::Mapping { pointer, key: Some(key), .. }) => Some(child(pointer, key)),
            Some(Frame::Mapping { key: None, .. }) => None,
        }
    }

    fn count_node(&mut self, pos: Position) -> Option<Diagnostic> {
        self.nodes += 1;
        (self.nodes > MAX_NODES).then(|| {
            Diagnostic::error(Code::YamlTooLarge, "", format!("the document has more than {MAX_NODES} nodes"))
                .help("a contract this large is almost certainly generated by mistake")
                .at(pos)
        })
    }

    fn scalar(&mut self, text: String, style: TScalarStyle, pos: Position) -> Option<Diagnostic> {
        if let Some(e) = self.count_node(pos) {
            return Some(e);
        }
        match self.next_pointer() {
            None => {
                // A mapping key.
                let Some(Frame::Mapping { pointer, map, key }) = self.stack.last_mut() else {
                    return None;
                };
                let key_pointer = child(pointer, &text);
                if map.contains_key(&text) {
                    let first = self.spans.keys.get(&key_pointer).copied();
                    let mut e = Diagnostic::error(Code::YamlDuplicateKey, &key_pointer, format!("duplicate key `{text}`")).at_key().at(pos);
                    if let Some(first) = first {
                        e = e.help(format!("`{text}` is already defined at line {}; merge the two or rename one", first.line));
                    }
                    self.errors.push(e);
                    // Parse the duplicate's value under a scratch name so later errors still have positions.
                    let mut scratch = format!("{text}\u{0}duplicate");
                    while map.contains_key(&scratch) {
                        scratch.push('\u{0}');
                    }
                    *key = Some(scratch);
                } else {
                    self.spans.keys.insert(key_pointer, pos);
                    *key = Some(text);
                }
                None
            }
            Some(pointer) => {
                self.spans.values.insert(pointer, pos);
                let value = resolve_scalar(text, style);
                self.push_value(value);
                None
            }
        }
    }

    fn open(&mut self, is_map: bool, pos: Position) -> Option<Diagnostic> {
        if let Some(e) = self.count_node(pos) {
            return Some(e);
        }
        let Some(pointer) = self.next_pointer() else {
            return Some(
                Diagnostic::error(Code::YamlSyntax, "", "a mapping key must be a plain value, not a list or a mapping")
                    .help("write keys as simple names")
                    .at(pos),
            );
        };
        if self.stack.len() >= MAX_DEPTH {
            return Some(too_deep(pos));
        }
        self.spans.values.insert(pointer.clone(), pos);
        self.stack.push(if is_map {
            Frame::Mapping { pointer, map: Map::new(), key: None }
        } else {
            Frame::Sequence { pointer, items: Vec::new() }
        });
        None
    }

    fn close(&mut self) {
        let value = match self.stack.pop() {
            Some(Frame::Sequence { items, .. }) => Value::Array(items),
            Some(Frame::Mapping { map, .. }) => Value::Object(map),
            None => return,
        };
        self.push_value(value);
    }

    fn push_value(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Sequence { items, .. }) => items.push(value),
            Some(Frame::Mapping { map, key, .. }) => {
                if let Some(key) = key.take() {
                    // A duplicate's scratch value is dropped: the first definition stands.
                    if !key.contains('\u{0}') {
                        map.insert(key, value);
                    }
                }
            }
        }
    }
}

fn too_deep(pos: Position) -> Diagnostic {
    Diagnostic::error(Code::YamlTooDeep, "", format!("collections are nested more than {MAX_DEPTH} levels deep"))
        .help("flatten the structure; no contract needs this depth")
        .at(pos)
}

fn anchor_error(pos: Position, what: &str) -> Diagnostic {
    Diagnostic::error(Code::YamlAnchor, "", format!("{what} is not allowed in a contract"))
        .help("write the value out in full: anchors and aliases make a contract harder to read and can expand without bound")
        .at(pos)
}

fn tag_error(pos: Position) -> Diagnostic {
    Diagnostic::error(Code::YamlTag, "", "YAML tags (`!!str`, `!custom`) are not allowed in a contract")
        .help("remove the tag; quote the value if it must be a string")
        .at(pos)
}

/// The YAML 1.2 core schema for plain scalars; everything quoted is a string.
fn resolve_scalar(text: String, style: TScalarStyle) -> Value {
    if !matches!(style, TScalarStyle::Plain) {
        return Value::String(text);
    }
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(&text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Number(i.into());
        }
        if let Ok(u) = text.parse::<u64>() {
            return Value::Number(u.into());
        }
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Number(i.into());
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Number(i.into());
    }
    if looks_like_float(&text)
        && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Value::Number(n);
    }
    Value::String(text)
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn looks_like_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = all_digits(int) && frac.is_none_or(all_digits) && (!int.is_empty() || frac.is_some_and(|f| !f.is_empty()));
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(text: &str) -> Document {
        parse(text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn err(text: &str) -> Diagnostic {
        parse(text).err().and_then(|mut e| e.pop()).expect("an error")
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let doc = ok("a: 1\nb: 1.5\nc: yes\nd: '1'\ne: ~\nf: true\ng: 1.2.0\nh: 0x1f\ni:\n");
        assert_eq!(doc.value, json!({"a": 1, "b": 1.5, "c": "yes", "d": "1", "e": null, "f": true, "g": "1.2.0", "h": 31, "i": null}));
    }

    #[test]
    fn every_key_and_value_has_its_position() {
        let doc = ok("tables:\n  orders:\n    columns:\n      id: { type: string }\n");
        let spans = &doc.spans;
        assert_eq!(spans.locate("/tables/orders", Target::Key), Position { line: 2, column: 3 });
        assert_eq!(spans.locate("/tables/orders/columns/id/type", Target::Value), Position { line: 4, column: 19 });
        // A missing node is located at its nearest ancestor's key.
        assert_eq!(spans.locate("/tables/orders/upsert/key", Target::Value), Position { line: 2, column: 3 });
    }

    #[test]
    fn refuses_what_makes_documents_surprising() {
        assert_eq!(err("a: &x 1\nb: *x\n").code, Code::YamlAnchor);
        assert_eq!(err("a: !!str 1\n").code, Code::YamlTag);
        assert_eq!(err("a: 1\n---\nb: 2\n").code, Code::YamlMultipleDocuments);
        assert_eq!(err("a: 1\na: 2\n").code, Code::YamlDuplicateKey);
        assert_eq!(err("? [a]\n: 1\n").code, Code::YamlSyntax);
        assert_eq!(err("").code, Code::YamlSyntax);
        assert_eq!(err("a: [1, 2\n").code, Code::YamlSyntax);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let text = "[".repeat(100_000);
        assert_eq!(err(&text).code, Code::YamlTooDeep);
        let text: String = (0..200).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        assert_eq!(err(&text).code, Code::YamlTooDeep);
        let text = format!("{}1{}", "[".repeat(60), "]".repeat(60));
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn duplicate_keys_point_at_both_places() {
        let e = err("a: 1\nb:\n  c: 1\n  c: 2\n");
        assert_eq!(e.position, Some(Position { line: 4, column: 3 }));
        assert!(e.help.as_deref().unwrap_or_default().contains("line 3"));
    }

    #[test]
    fn bad_bytes_are_located() {
        let e = decode(b"a: 1\nb: \xff\n").unwrap_err();
        assert_eq!(e.position, Some(Position { line: 2, column: 4 }));
    }
}
