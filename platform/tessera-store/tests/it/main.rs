//! Integration tests of the catalog and the event log, each run against
//! SQLite (a file in a temporary directory) and PostgreSQL (a database of
//! its own on 127.0.0.1:5432, or `TESSERA_TEST_POSTGRES`).
//!
//! Without PostgreSQL the PostgreSQL variants say so and pass, except under
//! `CI=true`, where they fail.

#![allow(clippy::print_stderr)] // Tests report what they measured and what they skipped.

mod append;
mod concurrency;
mod forget;
mod publish;
mod support;

/// Declares `mod $name { sqlite, postgres }`, each running `$name(store)`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = $crate::support::TestDb::sqlite().await;
                super::$name(&db).await;
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let Some(db) = $crate::support::TestDb::postgres().await else { return };
                super::$name(&db).await;
                db.finish().await;
            }
        }
    )*};
}
