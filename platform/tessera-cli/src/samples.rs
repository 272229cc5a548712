//! Deterministic sample events generated from a contract alone.
//!
//! Each stream is one entity (the key of the product's first upsert table):
//! it starts with the event that table's first rule handles, goes on with a
//! random selection of the other event types in contract order, and now and
//! then ends with a delete. Payloads follow the event's JSON Schema (enums,
//! formats, bounds, required fields) and its classifications (a stream's
//! person has one consistent name, email and phone). Events of types with
//! older schema versions are sometimes written at an older version, by
//! inverting the upcasters, and kept so only when upcasting gives the
//! original back: the files exercise upcasting on every replay.
//!
//! The same contract, stream count and seed always give the same bytes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};
use tessera_contract::model::{Contract, EventType, FieldPath, Projection, Rule, Source, UpcastStep};
use tessera_contract::{Policy, upcast};
use tessera_core::EventTypeName;

/// How deep generated payloads nest at most.
const MAX_DEPTH: usize = 12;
/// How many values one generated payload holds at most.
const MAX_VALUES: usize = 2_000;

/// 2026-01-01T00:00:00Z, the start of every sample timeline.
const EPOCH_MS: i64 = 1_767_225_600_000;

const FIRST: [&str; 16] = [
    "Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farah", "Gustav", "Hana", "Ines", "Jonas", "Keiko", "Lars", "Maya", "Nils", "Olga",
    "Pedro",
];
const LAST: [&str; 16] = [
    "Lovelace", "Santos", "Rossi", "Ivanov", "Yilmaz", "Haddad", "Berg", "Sato", "Moreau", "Weber", "Tanaka", "Nielsen", "Cohen", "Larsen",
    "Novak", "Silva",
];
const STREETS: [&str; 8] =
    ["High Street", "Station Road", "Mill Lane", "Church Street", "Park Avenue", "Kingsway", "Elm Grove", "Harbour View"];
const CITIES: [(&str, &str); 8] = [
    ("London", "GB"),
    ("Berlin", "DE"),
    ("Paris", "FR"),
    ("Amsterdam", "NL"),
    ("Madrid", "ES"),
    ("Milan", "IT"),
    ("Oslo", "NO"),
    ("New York", "US"),
];
const WORDS: [&str; 12] = ["alpha", "bravo", "delta", "echo", "nova", "orbit", "pixel", "quartz", "river", "solar", "terra", "vector"];

pub fn generate_command(contract: &Path, streams: usize, seed: u64, output: Option<&Path>) -> Result<ExitCode> {
    let policy = Policy::builtin();
    let bytes = std::fs::read(contract).with_context(|| format!("cannot read {}", contract.display()))?;
    let contract = tessera_contract::lint_bytes(&bytes, &policy)
        .valid()
        .with_context(|| "the contract has errors: run `tessera lint` on it first".to_owned())?;
    let text = generate(&contract, streams, seed);
    match output {
        Some(path) => std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One event in the sample file's envelope.
struct Sample {
    at_ms: i64,
    seq: usize,
    line: Value,
}

/// The person a stream's personal data belongs to.
struct Person {
    first: &'static str,
    last: &'static str,
    n: u32,
    city: (&'static str, &'static str),
    street: &'static str,
    house: u32,
}

struct StreamState {
    clock_ms: i64,
    person: Person,
    /// Values of identity-like and personal fields, reused within the stream.
    remembered: HashMap<String, Value>,
    counters: HashMap<String, i64>,
    /// Values the current payload may still hold.
    budget: usize,
}

/// The NDJSON text of the sample events.
pub fn generate(contract: &Contract, streams: usize, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (create, middle, delete) = lifecycle(contract);
    let keys = key_fields(contract);
    // Streams are named like the entity their key identifies (`order_id` gives
    // `ORD-000001`), so that other products' references to it join.
    let stream_prefix = keys.first().map_or_else(|| prefix(contract.name.as_str()), |k| prefix(&entity(k)));
    let mut samples = Vec::new();
    for s in 0..streams {
        let stream_id = format!("{stream_prefix}-{:06}", s + 1);
        let mut state = StreamState {
            clock_ms: EPOCH_MS + rng.i64(0..90 * 86_400_000),
            person: Person {
                first: FIRST[rng.usize(..FIRST.len())],
                last: LAST[rng.usize(..LAST.len())],
                n: rng.u32(1..999),
                city: CITIES[rng.usize(..CITIES.len())],
                street: STREETS[rng.usize(..STREETS.len())],
                house: rng.u32(1..250),
            },
            remembered: HashMap::new(),
            counters: HashMap::new(),
            budget: 0,
        };
        let mut types: Vec<&EventTypeName> = create.iter().collect();
        for (event, repeats) in &middle {
            let times = if *repeats { rng.usize(1..4) } else { usize::from(rng.f32() < 0.5) };
            types.extend(std::iter::repeat_n(event, times));
        }
        if let Some(d) = &delete
            && rng.f32() < 0.03
        {
            types.push(d);
        }
        for (version, event_name) in types.into_iter().enumerate() {
            let Some(event) = contract.events.get(event_name) else {
                continue;
            };
            state.clock_ms += rng.i64(60_000..36 * 3_600_000);
            state.budget = MAX_VALUES;
            let payload = object(&event.schema, &event.schema, "", &keys, &stream_id, &mut state, &mut rng);
            let (schema_version, payload) = maybe_older(event, payload, &mut rng);
            let id = uuid_v7(state.clock_ms, &mut rng);
            let line = json!({
                "stream": stream_id,
                "type": event_name.as_str(),
                "id": id,
                "schema_version": schema_version,
                "payload": payload,
                "metadata": { "producer": format!("{}-service", contract.domain), "correlation_id": uuid_v7(state.clock_ms, &mut rng) },
                "expected_version": if version == 0 { json!("no_stream") } else { json!(version) },
            });
            samples.push(Sample { at_ms: state.clock_ms, seq: samples.len(), line });
        }
    }
    // Interleave streams by time, as producers would append them.
    samples.sort_by_key(|s| (s.at_ms, s.seq));
    let mut out = String::new();
    for s in samples {
        let _ = writeln!(out, "{}", s.line);
    }
    out
}

/// The creating event, the others (with whether they repeat), the deleting one.
fn lifecycle(contract: &Contract) -> (Option<EventTypeName>, Vec<(EventTypeName, bool)>, Option<EventTypeName>) {
    let mut create = None;
    let mut delete = None;
    let mut in_upsert = Vec::new();
    for table in contract.tables.values() {
        if let Projection::Upsert { rules, .. } = &table.projection {
            for (event, rule) in rules {
                match rule {
                    Rule::Delete(_) => delete = delete.or(Some(event.clone())),
                    Rule::Set(_) if create.is_none() => create = Some(event.clone()),
                    Rule::Set(_) => {}
                }
                in_upsert.push(event.clone());
            }
            break;
        }
    }
    let create = create.or_else(|| contract.events.keys().next().cloned());
    let middle = contract
        .events
        .keys()
        .filter(|e| Some(*e) != create.as_ref() && Some(*e) != delete.as_ref())
        .map(|e| (e.clone(), !in_upsert.contains(e)))
        .collect();
    (create, middle, delete)
}

/// Payload paths that the first upsert table's rules map to its key: in
/// every event of a stream, a field at such a path carries the stream's id.
fn key_fields(contract: &Contract) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Projection::Upsert { key, rules }) =
        contract.tables.values().map(|t| &t.projection).find(|p| matches!(p, Projection::Upsert { .. }))
    {
        for rule in rules.values() {
            for k in key {
                if let Some(Source::Payload(p)) = rule.assignments().get(k) {
                    out.push(p.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The entity a dotted id path names: `order_id` and `order.id` give `order`.
fn entity(path: &str) -> String {
    let mut parts = path.rsplit('.');
    let last = parts.next().unwrap_or_default();
    if last == "id" { parts.next().unwrap_or("id").to_owned() } else { last.trim_end_matches("_id").to_owned() }
}

fn prefix(product: &str) -> String {
    product.chars().filter(char::is_ascii_alphabetic).take(3).collect::<String>().to_uppercase()
}

fn deref<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let mut node = node;
    for _ in 0..16 {
        match node.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')).and_then(|p| root.pointer(p)) {
            Some(next) => node = next,
            None => break,
        }
    }
    node
}

#[allow(clippy::too_many_arguments)]
fn object(root: &Value, schema: &Value, path: &str, keys: &[String], stream: &str, st: &mut StreamState, rng: &mut fastrand::Rng) -> Value {
    let schema = deref(root, schema);
    let required: Vec<&str> = schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let mut out = Map::new();
    for (name, prop) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        if !required.contains(&name.as_str()) && rng.f32() < 0.2 {
            continue;
        }
        let here = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        out.insert(name.clone(), value(root, prop, &here, name, keys, stream, st, rng));
    }
    Value::Object(out)
}

#[allow(clippy::too_many_arguments)]
fn value(
    root: &Value,
    schema: &Value,
    path: &str,
    name: &str,
    keys: &[String],
    stream: &str,
    st: &mut StreamState,
    rng: &mut fastrand::Rng,
) -> Value {
    // Recursive schemas (`$ref` back to a parent) end here instead of
    // growing without bound, in depth or in breadth.
    if path.matches(['.', '[']).count() > MAX_DEPTH || st.budget == 0 {
        return Value::Null;
    }
    st.budget -= 1;
    let schema = deref(root, schema);
    if keys.iter().any(|k| k == path) {
        return json!(stream);
    }
    if let Some(v) = schema.get("const") {
        return v.clone();
    }
    let classification = schema.get("classification").and_then(Value::as_str).filter(|c| *c != "none");
    let identity = name == "id" || name.ends_with("_id") || classification.is_some();
    if identity && let Some(v) = st.remembered.get(path) {
        return v.clone();
    }
    let v = fresh(root, schema, path, name, classification, keys, stream, st, rng);
    if identity {
        st.remembered.insert(path.to_owned(), v.clone());
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn fresh(
    root: &Value,
    schema: &Value,
    path: &str,
    name: &str,
    classification: Option<&str>,
    keys: &[String],
    stream: &str,
    st: &mut StreamState,
    rng: &mut fastrand::Rng,
) -> Value {
    if let Some(options) = schema.get("enum").and_then(Value::as_array).filter(|o| !o.is_empty()) {
        return options[rng.usize(..options.len())].clone();
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => vec!["string"],
    };
    let min = schema.get("minimum").and_then(Value::as_f64);
    let max = schema.get("maximum").and_then(Value::as_f64);
    let p = &st.person;
    match types.first().copied().unwrap_or("string") {
        "object" => object(root, schema, path, keys, stream, st, rng),
        "array" => {
            let items = schema.get("items").cloned().unwrap_or(json!({"type": "string"}));
            let n = rng.usize(1..4);
            Value::Array((0..n).map(|_| value(root, &items, &format!("{path}[]"), name, keys, stream, st, rng)).collect())
        }
        "boolean" => json!(rng.bool()),
        "integer" => {
            let lo = min.unwrap_or(if name.contains("year") { 1950.0 } else { 1.0 }) as i64;
            let hi = max.map(|m| m as i64).unwrap_or(lo.saturating_add(if name.contains("year") { 55 } else { 99 }));
            if name.ends_with("_no") || name.starts_with("seq") {
                let c = st.counters.entry(path.to_owned()).or_insert(lo - 1);
                *c += 1;
                return json!(*c);
            }
            json!(rng.i64(lo..=hi.max(lo)))
        }
        "number" => {
            let lo = min.unwrap_or(1.0);
            let hi = max.unwrap_or(lo + 499.0);
            let x = lo + rng.f64() * (hi - lo);
            json!((x * 100.0).round() / 100.0)
        }
        _ => {
            let format = schema.get("format").and_then(Value::as_str);
            let text = match (classification, format) {
                (Some("pii.email"), _) | (_, Some("email")) => {
                    format!("{}.{}{}@example.com", p.first.to_lowercase(), p.last.to_lowercase(), p.n)
                }
                (Some("pii.name"), _) if name.contains("first") || name.contains("given") => p.first.to_owned(),
                (Some("pii.name"), _) if name.contains("last") || name.contains("family") => p.last.to_owned(),
                (Some("pii.name"), _) => format!("{} {}", p.first, p.last),
                (Some("pii.phone"), _) => format!("+44 20 7946 {:04}", p.n),
                (Some("pii.address"), _) if name.contains("post") || name.contains("zip") => {
                    format!("{}{:02} {}XY", &p.city.1, p.house % 100, p.n % 10)
                }
                (Some("pii.address"), _) if name.contains("city") => p.city.0.to_owned(),
                (Some("pii.address"), _) => format!("{} {}", p.house, p.street),
                (Some("pii.national_id"), _) => format!("QQ{:06}C", p.n * 1000 + p.house),
                (Some("pii.birth_date"), _) | (_, Some("date")) if name.contains("birth") => {
                    format!("{}-{:02}-{:02}", 1950 + p.n % 55, 1 + p.n % 12, 1 + p.house % 28)
                }
                (Some("pii.ip_address"), _) | (_, Some("ipv4")) => {
                    format!("203.0.113.{}", p.n % 255)
                }
                (Some("pii.payment_card"), _) if name.contains("last4") => format!("{:04}", p.n),
                (Some("pii.payment_card"), _) => format!("4111 1111 1111 {:04}", p.n),
                (_, Some("date-time")) => iso(st.clock_ms, true),
                (_, Some("date")) => iso(st.clock_ms, false),
                (_, Some("uuid")) => uuid_v7(st.clock_ms, rng),
                _ if name == "country" || name.ends_with("_country") => p.city.1.to_owned(),
                _ if name == "city" => p.city.0.to_owned(),
                _ if name.ends_with("_id") || name == "id" => {
                    // `customer.id` is a customer's id, like `customer_id`.
                    format!("{}-{:06}", prefix(&entity(path)), rng.u32(1..=600))
                }
                _ if name == "sku" => format!("SKU-{:05}", rng.u32(1..2000)),
                _ => format!("{}-{}", WORDS[rng.usize(..WORDS.len())], rng.u32(1..100)),
            };
            json!(text)
        }
    }
}

/// With some chance, the payload written at an older schema version.
fn maybe_older(event: &EventType, payload: Value, rng: &mut fastrand::Rng) -> (u32, Value) {
    if event.version == 1 || rng.f32() >= 0.3 {
        return (event.version, payload);
    }
    let target = rng.u32(1..event.version);
    // Where an upcaster fills in a default, the older payload had none: the
    // current one then holds exactly that default.
    let mut payload = payload;
    for u in event.upcasters.iter().filter(|u| u.from >= target) {
        for step in &u.steps {
            if let UpcastStep::Default { field, value } = step {
                let _ = field.put(&mut payload, value.clone());
            }
        }
    }
    let mut old = payload.clone();
    for u in event.upcasters.iter().rev().filter(|u| u.from >= target) {
        for step in u.steps.iter().rev() {
            invert(step, &mut old);
        }
    }
    // Keep the old form only if upcasting restores the payload exactly.
    match upcast(event, target, old.clone()) {
        Ok(back) if back == payload => (target, old),
        _ => (event.version, payload),
    }
}

fn invert(step: &UpcastStep, v: &mut Value) {
    match step {
        UpcastStep::Move { from, to } => {
            if let Some(x) = take(v, to) {
                let _ = from.put(v, x);
            }
        }
        UpcastStep::Default { field, value } => {
            if field.get(v) == Some(value) {
                take(v, field);
            }
        }
        UpcastStep::Map { field, values } => {
            if let Some(slot) = field.get_mut(v)
                && let Some((k, _)) = values.iter().find(|(_, to)| *to == slot)
            {
                *slot = json!(k);
            }
        }
        UpcastStep::Scale { field, by } => {
            if let Some(slot) = field.get_mut(v)
                && let Some(x) = slot.as_f64()
            {
                let y = (x / by * 1e6).round() / 1e6;
                *slot = if y.fract() == 0.0 { json!(y as i64) } else { json!(y) };
            }
        }
        UpcastStep::Remove { .. } | UpcastStep::Cast { .. } => {}
    }
}

/// Removes the value at `p`, and a parent object the removal left empty:
/// the older shape a `move` came from had no such parent.
fn take(v: &mut Value, p: &FieldPath) -> Option<Value> {
    let removed = p.take(v)?;
    if let [parent, _] = p.0.as_slice()
        && v.get(parent).and_then(Value::as_object).is_some_and(Map::is_empty)
    {
        v.as_object_mut().and_then(|o| o.shift_remove(parent));
    }
    Some(removed)
}

/// A time-ordered UUID (v7) from a timestamp and the seeded generator.
fn uuid_v7(ms: i64, rng: &mut fastrand::Rng) -> String {
    let mut random = [0u8; 10];
    rng.fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(ms as u64, &random).into_uuid().to_string()
}

/// `2026-01-01T12:34:56Z` (or the date alone) for milliseconds since 1970.
fn iso(ms: i64, with_time: bool) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if with_time {
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso(EPOCH_MS, true), "2026-01-01T00:00:00Z");
        assert_eq!(iso(EPOCH_MS + 59 * 86_400_000 + 3_723_000, true), "2026-03-01T01:02:03Z");
        assert_eq!(iso(0, false), "1970-01-01");
    }
}
