//! What [`RedisBackend::connect`](super::RedisBackend::connect) does before
//! the backend exists: reach Redis within a bound, check that it makes every
//! write durable, and note where the feed stands.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::{Client, RedisError};

use super::{unavailable, Keys, Position, CONNECTION_TIMEOUT, RESPONSE_TIMEOUT};
use crate::store::backend::BackendError;

/// How long [`RedisBackend::connect`] tries to reach Redis in all.
pub(super) const CONNECT_BUDGET: Duration = Duration::from_secs(25);

/// How many times `connect` tries, and the pause before the second try,
/// doubled for each one after.
const CONNECT_ATTEMPTS: u32 = 5;
const CONNECT_PAUSE: Duration = Duration::from_millis(250);

/// `url` without its password, for messages and logs.
pub(super) fn without_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let shown_user = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        // A lone userinfo is a user name to the client, but it is where a
        // password ends up when the colon is forgotten (`redis://secret@host`):
        // hidden too.
        "***".to_owned()
    };
    format!("{}{shown_user}{}", &url[..scheme_end + 3], &rest[at..])
}

/// Connects, trying [`CONNECT_ATTEMPTS`] times with a growing pause.
pub(super) async fn connect_retrying(client: &Client) -> Result<ConnectionManager, RedisError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let mut pause = CONNECT_PAUSE;
    let mut attempt = 1;
    loop {
        let tried = async {
            let mut conn = client
                .get_connection_manager_with_config(config.clone())
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok(conn)
        };
        match tried.await {
            Ok(conn) => return Ok(conn),
            Err(e) if attempt >= CONNECT_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "cannot reach Redis yet; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

/// Refuses a Redis that may lose an acknowledged write, unless told not to.
pub(super) async fn check_durability(
    conn: &mut ConnectionManager,
    url: &str,
    allow_unsafe: bool,
) -> Result<(), BackendError> {
    let needs =
        "keygate needs appendonly yes and appendfsync always (or allow_unsafe_durability = true)";
    let setting = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            let pairs: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("CONFIG GET {name} failed: {e}"))?;
            // [name, value]; nothing when the server does not know the setting.
            pairs
                .get(1)
                .cloned()
                .ok_or_else(|| format!("CONFIG GET {name} answered nothing"))
        }
    };
    let read =
        async { Ok::<_, String>((setting("appendonly").await?, setting("appendfsync").await?)) };
    let problem = match read.await {
        Ok((appendonly, _)) if appendonly != "yes" => {
            format!("Redis at {url} has appendonly {appendonly}; {needs}")
        }
        Ok((_, appendfsync)) if appendfsync != "always" => {
            format!("Redis at {url} has appendfsync {appendfsync}; {needs}")
        }
        Ok(_) => return Ok(()),
        Err(why) => {
            format!("could not verify that Redis at {url} fsyncs every write ({why}); {needs}")
        }
    };
    if allow_unsafe {
        tracing::warn!(
            "{problem}; starting anyway: an acknowledged change may be lost if Redis crashes"
        );
        Ok(())
    } else {
        Err(BackendError::Unavailable(problem))
    }
}

/// Where the feed stands now: its last entry and the counter, read in one
/// step.
pub(super) async fn position(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> Result<Position, BackendError> {
    let (seq, last): (Option<u64>, StreamRangeReply) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg(&keys.seq)
        .cmd("XREVRANGE")
        .arg(&keys.feed)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(|e| unavailable("read the feed's position", e))?;
    Ok(Position {
        id: last
            .ids
            .into_iter()
            .next()
            .map(|e| e.id)
            .unwrap_or_else(|| "0-0".to_owned()),
        seq: seq.unwrap_or(0),
    })
}
