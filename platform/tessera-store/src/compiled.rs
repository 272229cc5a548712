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
        Ok(version)
    }
}

/// The keyword at the end of a schema path: `/properties/total/minimum` → `minimum`.
fn rule(schema_path: &str) -> String {
    schema_path.rsplit('/').next().map(str::to_owned).unwrap_or_default()
}
