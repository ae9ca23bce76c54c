//! Rate limits on failed attempts, in Redis so every replica shares them: fixed windows keyed by
//! a hash of the e-mail address (known or not, so limits reveal nothing about which accounts
//! exist), by client address, and by user for two-factor codes. Only failures count: a user who
//! signs in correctly is never slowed down, and a success clears the account's counter.

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
