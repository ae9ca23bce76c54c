//! The job's reads and writes that never give up: Postgres briefly away (a failover, a restart)
//! makes the job wait, never skip work.

use std::time::Duration;

use uuid::Uuid;

/// A device to push to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Device {
    pub token: String,
    pub user_id: Uuid,
    /// registered or moved to this user (the shadow tells device changes from differences)
    pub last_seen_at: chrono::DateTime<chrono::Utc>,
}

/// The recipients' devices now (as the monolith read them at push time).
pub async fn devices(pool: &sqlx::PgPool, recipients: &[Uuid]) -> Vec<Device> {
    if recipients.is_empty() {
        return Vec::new();
    }
    retry_db("reading devices", || {
        sqlx::query_as::<_, Device>(
            "SELECT token, user_id, last_seen_at FROM legacy.devices WHERE user_id = ANY($1::uuid[]) ORDER BY user_id, token",
        )
        .bind(recipients)
        .fetch_all(pool)
    })
    .await
}

/// Runs a database operation until it succeeds: the job never skips work because Postgres is
/// briefly away (a failover, a restart); it waits, logging, with growing pauses.
pub async fn retry_db<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                metrics::counter!("notification_db_errors_total").increment(1);
                tracing::warn!(error = %e, "{what}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How long the job's records are kept: its claims (`notification.pushes`, what makes a
/// redelivery a no-op: longer than any redelivery), the in-process senders' log and its shadow
/// comparisons.
pub const RETENTION_DAYS: i32 = 7;

/// Deletes records past [`RETENTION_DAYS`] every ten minutes, in batches, until `stop`.
pub async fn prune_forever(pool: sqlx::PgPool, mut stop: tokio::sync::watch::Receiver<bool>) {
    const TABLES: &[(&str, &str, &str)] = &[
        ("notification.pushes", "created_at", "status <> 'sending'"),
        ("legacy.push_log", "sent_at", "true"),
        ("strangler.shadow_comparisons", "recorded_at", "route = 'notification-push'"),
    ];
    loop {
        for (table, at, which) in TABLES {
            let sql = format!(
                "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {which} AND {at} < now() - make_interval(days => $1) LIMIT 10000)"
            );
            loop {
                match sqlx::query(&sql).bind(RETENTION_DAYS).execute(&pool).await {
                    Ok(r) if r.rows_affected() == 10_000 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, table, "pruning");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = stop.changed() => return,
        }
    }
}
