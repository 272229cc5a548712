//! A published contract version, compiled once for validating payloads.

use std::collections::HashMap;

use jsonschema::{PatternOptions, Validator};
use serde_json::Value;
use tessera_contract::Contract;
use tessera_contract::model::EventType;
use tessera_contract::seal::{SealPlan, plan_for};

use crate::envelope::EventInput;
use crate::error::EventProblem;

/// A contract with one compiled payload validator per event type.
#[derive(Debug)]
pub struct Compiled {
    pub contract: Contract,
    pub version: String,
    validators: HashMap<String, Validator>,
    /// What to seal, per event type and schema version.
    plans: HashMap<(String, u32), SealPlan>,
}

impl Compiled {
    pub fn new(contract: Contract) -> Result<Self, String> {
        let mut validators = HashMap::new();
        for (name, event) in &contract.events {
            // The linear-time regex engine: a payload can never make a
            // `pattern` backtrack exponentially.
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .with_pattern_options(PatternOptions::regex())
                .build(&event.schema)
                .map_err(|e| format!("the payload schema of `{name}` does not compile: {e}"))?;
            validators.insert(name.to_string(), validator);
        }
        let mut plans = HashMap::new();
        for (name, event) in &contract.events {
            for v in 1..=event.version {
                if let Some(p) = plan_for(&contract, name.as_str(), v) {
                    plans.insert((name.to_string(), v), p);
                }
            }
        }
        let version = contract.version.to_string();
        Ok(Self { contract, version, validators, plans })
    }

    /// What to seal in a payload of `event_type` at schema `version`.
    pub fn plan(&self, event_type: &str, version: u32) -> Option<&SealPlan> {
        self.plans.get(&(event_type.to_owned(), version))
    }

    pub fn event_type(&self, name: &str) -> Option<&EventType> {
        self.contract.events.get(name)
    }

    /// Checks an event against its type, upcasting an older payload to the
    /// current schema first. Returns the schema version the event is stored
    /// with.
    pub fn check(&self, index: usize, event: &EventInput) -> Result<u32, EventProblem> {
        let problem =
            |pointer: String, code: &'static str, message: String| EventProblem { index, line: event.line, pointer, code, message };
        let Some(event_type) = self.event_type(&event.event_type) else {
            let known: Vec<&str> = self.contract.events.keys().map(|k| k.as_str()).collect();
            return Err(problem(
                "/type".into(),
                "unknown_event_type",
                format!(
                    "`{}` is not an event type of {} {}; the event types are {}",
                    event.event_type,
                    self.contract.product(),
                    self.version,
                    known.join(", ")
                ),
            ));
        };
        let version = event.schema_version.unwrap_or(event_type.version);
        let validator = &self.validators[&event.event_type];
        let current;
        let payload: &Value = if version == event_type.version {
            &event.payload
        } else {
            current = tessera_contract::upcast(event_type, version, event.payload.clone()).map_err(|e| {
                problem("/schema_version".into(), "upcast_failed", format!("`{}` at schema version {version}: {e}", event.event_type))
            })?;
            &current
        };
        if let Err(error) = validator.validate(payload) {
            let pointer = error.instance_path().to_string();
            let upcast_note =
                if version == event_type.version { String::new() } else { format!(" (after upcasting from version {version})") };
            return Err(problem(
                format!("/payload{pointer}"),
                "payload_invalid",
                format!(
                    "the `{}` payload violates its schema{upcast_note} at `{}`: {} (rule `{}`)",
                    event.event_type,
                    if pointer.is_empty() { "/" } else { &pointer },
                    error,
                    rule(&error.schema_path().to_string())
                ),
            ));
        }
        if version != event_type.version
            && let (Some(then), Some(now)) = (self.plan(&event.event_type, version), self.plan(&event.event_type, event_type.version))
            && now.seals_anything()
            && !sealed_where_it_belongs(event_type, version, then, now, &event.payload)
        {
            return Err(problem(
                "/payload".into(),
                "payload_invalid",
                format!(
                    "the `{}` payload at schema version {version} holds a personal field where version {} has it, which version {version} \
                     does not: it could not be sealed; send the payload as version {} (schema_version), or with its fields where version {version} had them",
                    event.event_type, event_type.version, event_type.version
                ),
            ));
        }
        Ok(version)
    }
}

/// Whether every personal value of `payload` (at schema `version`) is
/// sealed by the plan of its version: marked where that plan seals, then
/// upcast, every value where the current plan seals must be a mark. A
/// field sent where only a later version has it would otherwise pass
/// validation after upcasting and be stored in clear.
fn sealed_where_it_belongs(event_type: &EventType, version: u32, then: &SealPlan, now: &SealPlan, payload: &Value) -> bool {
    const MARK: &str = "\u{0}sealed\u{0}";
    fn marked(v: &Value) -> bool {
        match v {
            Value::String(s) => s == MARK,
            Value::Null => true,
            Value::Object(o) => o.values().all(marked),
            Value::Array(a) => a.iter().all(marked),
            _ => false,
        }
    }
    let mut probe = payload.clone();
    then.apply(&mut probe, &mut |_, _| Ok::<_, std::convert::Infallible>(Value::String(MARK.to_owned())))
        .unwrap_or_else(|never| match never {});
    let Ok(upcast) = tessera_contract::upcast(event_type, version, probe) else { return false };
    // An upcaster's `default` fills a field with the contract's own value: not personal.
    let defaults: Vec<&Value> = event_type
        .upcasters
        .iter()
        .filter(|u| u.from >= version)
        .flat_map(|u| &u.steps)
        .filter_map(|s| match s {
            tessera_contract::model::UpcastStep::Default { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    let mut all = true;
    now.each_value(&upcast, &mut |_, v| all &= marked(v) || defaults.contains(&v));
    all
}

/// The keyword at the end of a schema path: `/properties/total/minimum` → `minimum`.
fn rule(schema_path: &str) -> String {
    schema_path.rsplit('/').next().map(str::to_owned).unwrap_or_default()
}
