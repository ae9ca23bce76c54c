//! Who sends the pushes for new messages (`legacy.push_owner`, docs/events.md "Who pushes"):
//! the one command of the switch and of its rollback.

use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Whoever handles sendMessage pushes in-process; the job only compares.
    Monolith,
    /// The push job sends every push.
    Notification,
}

impl Owner {
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Monolith => "monolith",
            Owner::Notification => "notification",
        }
    }

    pub fn parse(s: &str) -> Option<Owner> {
        match s {
            "monolith" => Some(Owner::Monolith),
            "notification" => Some(Owner::Notification),
            _ => None,
        }
    }
}

/// The owner now and since when.
pub async fn current(pool: &PgPool) -> Result<(Owner, chrono::DateTime<chrono::Utc>), sqlx::Error> {
    let (owner, since): (String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT owner, changed_at FROM legacy.push_owner").fetch_one(pool).await?;
    Ok((Owner::parse(&owner).unwrap_or(Owner::Monolith), since))
}

/// Hands the pushes to `to`. Messages whose transaction read the old owner are still pushed by
/// it (the event says so), those after by the new one: none doubled, none skipped.
pub async fn switch(pool: &PgPool, to: Owner) -> Result<Owner, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (was,): (String,) = sqlx::query_as("SELECT owner FROM legacy.push_owner FOR UPDATE").fetch_one(&mut *tx).await?;
    sqlx::query("UPDATE legacy.push_owner SET owner = $1, changed_at = now() WHERE owner <> $1")
        .bind(to.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Owner::parse(&was).unwrap_or(Owner::Monolith))
}
