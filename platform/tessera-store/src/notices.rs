//! Notices: what happened to a domain's data that others must hear of,
//! recorded in the same transaction as the change (a transactional
//! outbox). The catalog lists them; integration events are published from
//! them. Today: `SubjectForgotten` and `SubjectReadmitted` (see `keys`).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::principals::Principal;
use crate::{Store, now_micros};

/// One notice, as the feed serves it.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// Increasing in the order notices were recorded; a reader resumes after the last it saw.
    pub id: i64,
    pub kind: String,
    pub domain: String,
    pub body: Value,
    pub recorded_at: String,
}

/// The most notices one page holds.
pub const MAX_PAGE: i64 = 1000;

/// Records a notice inside the caller's transaction: it exists if and only
/// if the change it tells of committed.
pub(crate) async fn record(conn: &mut sqlx::AnyConnection, kind: &str, domain: &str, body: &Value) -> Result<()> {
    sqlx::query("INSERT INTO notices (kind, domain, body, recorded_at) VALUES ($1, $2, $3, $4)")
        .bind(kind)
        .bind(domain)
        .bind(body.to_string())
        .bind(now_micros())
        .execute(conn)
        .await?;
    Ok(())
}

impl Store {
    /// The notices of `domain` after `after`, oldest first, at most `limit`:
    /// for stewards and the domain's members (a notice may name a subject).
    pub async fn notices(&self, principal: &Principal, domain: &str, after: i64, limit: i64) -> Result<Vec<Notice>> {
        if principal.is_public() {
            return Err(Error::Unauthenticated("notices need a token: send `Authorization: Bearer <token>`".into()));
        }
        if !principal.roles.contains(&tessera_contract::Role::Steward) && !principal.is_member_of(domain) {
            return Err(Error::Forbidden(format!("the notices of domain `{domain}` are for stewards and the domain's members")));
        }
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::BadRequest(format!("limit {limit} is outside 1 to {MAX_PAGE}")));
        }
        let rows =
            sqlx::query("SELECT id, kind, domain, body, recorded_at FROM notices WHERE domain = $1 AND id > $2 ORDER BY id LIMIT $3")
                .bind(domain)
                .bind(after)
                .bind(limit)
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get(3)?;
                Ok(Notice {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    domain: r.try_get(2)?,
                    body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
                    recorded_at: crate::rfc3339(r.try_get(4)?),
                })
            })
            .collect()
    }
}
