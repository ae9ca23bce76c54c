//! Rate limits on failed attempts, in Redis so every replica shares them: fixed windows keyed by
//! a hash of the e-mail address (known or not, so limits reveal nothing about which accounts
//! exist), by client address, and by user for two-factor codes. Only failures count: a user who
//! signs in correctly is never slowed down, and a success clears the account's counter.
//!
//! The per-account and per-user keys count each attempt *before* it is tried ([`attempt`]), so a
//! burst of parallel guesses at one account gets exactly `max` tries. The per-address key is
//! checked before and counted after a failure: many legitimate users behind one address may log
//! in at once, and the check only needs to stop sustained stuffing.

use redis::aio::ConnectionManager;

use crate::tokens::sha256_hex;

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub max: u64,
}

pub fn login_keys(email: &str, ip: &str, limits: &crate::config::Limits) -> [Key; 2] {
    [
        Key { name: format!("rl:login:acct:{}", sha256_hex(email)), max: limits.login_failures_per_account },
        Key { name: format!("rl:login:ip:{ip}"), max: limits.login_failures_per_ip },
    ]
}

pub fn two_factor_key(user_id: &str, limits: &crate::config::Limits) -> Key {
    Key { name: format!("rl:2fa:user:{user_id}"), max: limits.two_factor_failures_per_user }
}

/// `Some(seconds until the window ends)` when any key is at its limit.
pub async fn blocked(redis: &ConnectionManager, keys: &[Key]) -> redis::RedisResult<Option<u64>> {
    let mut conn = redis.clone();
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.get(&k.name).ttl(&k.name);
    }
    let answers: Vec<(Option<u64>, i64)> = {
        let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        flat.chunks(2).map(|c| (redis::from_redis_value(&c[0]).ok().flatten(), redis::from_redis_value(&c[1]).unwrap_or(-1))).collect()
    };
    Ok(keys.iter().zip(answers).filter(|(k, (n, _))| n.unwrap_or(0) >= k.max).map(|(_, (_, ttl))| ttl.max(1) as u64).max())
}

/// Counts an attempt against `key` *before* it is tried (one atomic INCR; the window starts with
/// the first), and says `Some(seconds left)` when that made it go over the limit. Concurrent
/// attempts cannot all slip past a check made before any of them failed. A success gives the
/// attempt back with [`clear`] (only failures are meant to count).
pub async fn attempt(redis: &ConnectionManager, key: &Key, window_secs: u64) -> redis::RedisResult<Option<u64>> {
    let mut conn = redis.clone();
    let (count, ttl): (u64, i64) = redis::pipe()
        .incr(&key.name, 1)
        .cmd("EXPIRE")
        .arg(&key.name)
        .arg(window_secs)
        .arg("NX")
        .ignore()
        .ttl(&key.name)
        .query_async(&mut conn)
        .await?;
    Ok((count > key.max).then(|| ttl.max(1) as u64))
}

/// Counts one failure against every key (the window starts with the first failure).
pub async fn fail(redis: &ConnectionManager, keys: &[Key], window_secs: u64) -> redis::RedisResult<()> {
    let mut conn = redis.clone();
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.incr(&k.name, 1).ignore().cmd("EXPIRE").arg(&k.name).arg(window_secs).arg("NX").ignore();
    }
    pipe.query_async::<()>(&mut conn).await
}

pub async fn clear(redis: &ConnectionManager, key: &Key) -> redis::RedisResult<()> {
    let mut conn = redis.clone();
    redis::cmd("DEL").arg(&key.name).query_async::<()>(&mut conn).await
}
