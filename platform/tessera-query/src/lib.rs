//! Governed SQL: DataFusion over every data product, with the federated
//! masking policy applied beneath SQL for whoever is asking.
//!
//! From the bottom up: masks as Arrow kernels (`mask`), a table as one
//! caller may see it, masked directly above its scan (`table`), what may
//! run below the mask because it reads only clear columns (`late`), key
//! lookups answered from a serving index without a plan (`lookup`), the
//! catalogs a caller may read (`catalog`), what SQL may do (`sandbox`),
//! sessions, limits and the query lifecycle (`engine`), and the audit log
//! writer (`audit`). Knows nothing of HTTP or the PostgreSQL protocol: the
//! server speaks those and calls [`Engine`].

pub use tessera_sql::{budget, guard, sandbox};

pub mod admission;
pub mod audit;
pub mod catalog;
pub mod engine;
pub mod late;
pub mod lookup;
pub mod mask;
pub mod table;
pub mod unseal;
pub mod view;

pub use admission::{Admission, Concurrency, Permit};
pub use catalog::At;
pub use engine::{Audit, Engine, ErrorKind, Limits, Looked, Planned, QueryError, Rows, Session, tables_in, verify_read_only};
pub use mask::{HashKey, Mask};
pub use sandbox::Bounds;
