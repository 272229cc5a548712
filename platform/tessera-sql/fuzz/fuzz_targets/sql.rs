//! Any text through what every query meets before it runs: the bounds, the
//! read-only sandbox, then DataFusion's planner and optimizer over a small
//! catalog with the bounded functions. It must refuse or plan, never panic,
//! overflow a stack or hang; whatever the sandbox lets through must be a
//! read.

#![no_main]

use std::sync::{Arc, OnceLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use libfuzzer_sys::fuzz_target;
use tessera_sql::sandbox::{Bounds, check_bounded};

fn state() -> &'static SessionState {
    static STATE: OnceLock<SessionState> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut config = SessionConfig::new().with_information_schema(true);
        config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        let bounded = Arc::new(tessera_sql::guard::Bounded::new(64 << 10));
        let mut builder = SessionStateBuilder::new().with_config(config).with_default_features().with_analyzer_rule(Arc::clone(&bounded) as _);
        builder.scalar_functions().get_or_insert_with(Vec::new).extend(bounded.functions().iter().cloned());
        let ctx = SessionContext::new_with_state(builder.build());
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("email", DataType::Utf8, true),
            Field::new("total", DataType::Decimal128(12, 2), true),
            Field::new("n", DataType::Int64, true),
            Field::new("at", DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())), true),
        ]));
        for name in ["orders", "lines"] {
            let _ = ctx.register_table(name, Arc::new(EmptyTable::new(Arc::clone(&schema))));
        }
        ctx.state()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let bounds = Bounds { max_sql_bytes: 64 << 10, max_depth: 64, max_literal_bytes: 4096 };
    let Ok(checked) = check_bounded(sql, &bounds) else { return };
    let state = state().clone();
    futures::executor::block_on(async move {
        let Ok(plan) = state.statement_to_plan(checked.statement).await else { return };
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        assert!(options.verify_plan(&plan).is_ok(), "the sandbox let a write through: {sql}");
        if let Ok(optimized) = state.optimize(&plan) {
            let _ = state.create_physical_plan(&optimized).await;
        }
    });
});
