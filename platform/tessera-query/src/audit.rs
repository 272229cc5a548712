//! Writes the query audit log off the queries' path: records go to a
//! background task that stores them in batches (one transaction each).

use tessera_store::{QueryRecord, Store};
use tokio::sync::{mpsc, oneshot};

enum Message {
    Record(QueryRecord),
    Flush(oneshot::Sender<()>),
}

/// The sender side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Auditor {
    tx: mpsc::UnboundedSender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Record(r) => f.debug_tuple("Record").field(r).finish(),
            Message::Flush(_) => f.write_str("Flush"),
        }
    }
}

/// The most records stored in one transaction.
const BATCH: usize = 512;

impl Auditor {
    /// Starts the writer on the current tokio runtime.
    pub fn start(store: Store) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut waiters = Vec::new();
                let mut next = Some(first);
                while let Some(message) = next.take() {
                    match message {
                        Message::Record(r) => pending.push(r),
                        Message::Flush(done) => waiters.push(done),
                    }
                    if pending.len() < BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if let Err(e) = store.record_queries(&pending).await {
                    tracing::error!(error = %e, queries = pending.len(), "could not write the query audit log");
                }
                pending.clear();
                for w in waiters {
                    let _ = w.send(());
                }
            }
        });
        Self { tx }
    }

    pub fn record(&self, record: QueryRecord) {
        if self.tx.send(Message::Record(record)).is_err() {
            tracing::error!("the audit writer has stopped; a query went unaudited");
        }
    }

    /// Waits until every record sent before this call is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}
