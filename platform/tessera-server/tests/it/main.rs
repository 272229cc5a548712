//! The HTTP API over real HTTP, against SQLite and PostgreSQL.

#![allow(clippy::print_stderr)] // Tests say what they skipped.

mod api;
mod catalog;
mod hostile;
mod projection;
mod sql;
mod subjects;
mod support;

/// Declares `mod $name { sqlite, postgres }`, each running `$name(&server)`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let server = $crate::support::TestServer::start(false).await.expect("SQLite server");
                super::$name(&server).await;
                server.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(server) = $crate::support::TestServer::start(true).await else { return };
                super::$name(&server).await;
                server.finish().await;
            }
        }
    )*};
}
