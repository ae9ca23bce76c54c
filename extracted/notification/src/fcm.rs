//! One FCM HTTP v1 request, as the monolith makes it (docs/api/notifications.md "Push"), and
//! what its answer means for the job: delivered, token gone, worth retrying, or refused for good.

use std::time::Duration;

use serde_json::Value;

use bm_common::config::Fcm;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// 404 or `UNREGISTERED`: delete the device, never retry.
    Unregistered,
    /// 5xx, 429, a timeout or a network error: retry with backoff.
    Retry(String),
    /// Any other answer (a 4xx such as `INVALID_ARGUMENT`): retrying cannot help.
    Refused(String),
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    access_token: String,
}

impl Client {
    pub fn new(fcm: &Fcm, timeout: Duration, tls: &bm_common::http::OutboundTls) -> anyhow::Result<Client> {
        let http = tls.client_builder().timeout(timeout).build()?;
        let project: String = url_encode(&fcm.project_id);
        Ok(Client { http, url: format!("{}/v1/projects/{project}/messages:send", fcm.base_url), access_token: fcm.access_token.clone() })
    }

    /// Sends one request body (`{"message": …}`).
    pub async fn send(&self, body: &Value) -> Outcome {
        let r = match self.http.post(&self.url).bearer_auth(&self.access_token).json(body).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Outcome::Retry("timeout".into()),
            Err(e) => return Outcome::Retry(format!("request failed: {e}")),
        };
        let status = r.status().as_u16();
        if (200..300).contains(&status) {
            return Outcome::Sent;
        }
        let answer: Value = r.json().await.unwrap_or_default();
        classify(status, &answer)
    }
}

/// What a non-2xx answer means.
pub fn classify(status: u16, answer: &Value) -> Outcome {
    if bm_events::push::is_unregistered(status, answer) {
        return Outcome::Unregistered;
    }
    let what = format!("FCM answered {status}: {}", answer.to_string().chars().take(200).collect::<String>());
    if status >= 500 || status == 429 {
        Outcome::Retry(what)
    } else {
        Outcome::Refused(what)
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            // encodeURIComponent's unreserved set, as the monolith encodes the project id
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_classified() {
        assert_eq!(classify(404, &Value::Null), Outcome::Unregistered);
        assert_eq!(classify(400, &json!({"error": {"details": [{"errorCode": "UNREGISTERED"}]}})), Outcome::Unregistered);
        assert!(matches!(classify(503, &Value::Null), Outcome::Retry(_)));
        assert!(matches!(classify(429, &Value::Null), Outcome::Retry(_)));
        assert!(matches!(classify(400, &json!({"error": {"status": "INVALID_ARGUMENT"}})), Outcome::Refused(_)));
    }

    #[test]
    fn project_ids_are_encoded_as_encode_uri_component_does() {
        assert_eq!(url_encode("brainmessenger-dev"), "brainmessenger-dev");
        assert_eq!(url_encode("a b/c"), "a%20b%2Fc");
        assert_eq!(url_encode("it's(1)*!~"), "it's(1)*!~");
    }
}
