//! `kind = "webhook"`: POSTs the notice as JSON (its `text` field is what
//! Slack, Teams and Mattermost display), retrying with capped exponential
//! backoff.
//!
//! The client is hyper-util's over hyper-rustls, with rustls on aws-lc-rs:
//! the stack the AWS SDK already links, so webhooks add no TLS library and
//! no crate to the build.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::warn;

use super::notice::Notice;
use super::Failure;
use crate::backoff::backoff;

/// How much of an error response's body is kept for the log.
const BODY_KEPT: usize = 512;

enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// An HTTP endpoint to POST each notice to.
pub struct WebhookHook {
    name: String,
    transport: Transport,
    uri: Uri,
    /// For logs: the URL itself may hold a secret (chat webhooks do).
    host: String,
    header: Option<(HeaderName, HeaderValue)>,
    timeout: Duration,
    retries: u32,
    max_backoff: Duration,
}

impl std::fmt::Debug for WebhookHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookHook")
            .field("name", &self.name)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl WebhookHook {
    /// A client for `url` (checked by the config, or by the caller when it
    /// came from the environment). `header`'s value is marked sensitive.
    pub fn new(
        name: &str,
        url: &str,
        header: Option<(HeaderName, HeaderValue)>,
        timeout: Duration,
        retries: u32,
        max_backoff: Duration,
    ) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let host = uri.host().unwrap_or_default().to_string();
        let transport = if uri.scheme_str() == Some("https") {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
                .map_err(|e| {
                    format!("cannot load the system's CA certificates for https (is ca-certificates installed?): {e}")
                })?
                .https_only()
                .enable_http1()
                .build();
            Transport::Tls(Client::builder(TokioExecutor::new()).build(connector))
        } else {
            Transport::Plain(Client::builder(TokioExecutor::new()).build_http())
        };
        let header = header.map(|(name, mut value)| {
            value.set_sensitive(true);
            (name, value)
        });
        Ok(Self {
            name: name.to_string(),
            transport,
            uri,
            host,
            header,
            timeout,
            retries,
            max_backoff,
        })
    }

    /// POSTs `notice`, retrying what may pass later (timeouts, connection
    /// errors, 408, 429, 5xx) up to `retries` times.
    pub async fn deliver(&self, notice: &Notice) -> Result<(), Failure> {
        let body = Bytes::from(notice.to_json());
        let mut failures = 0;
        loop {
            let failure = match self.attempt(body.clone()).await {
                Ok(()) => return Ok(()),
                Err(f) => f,
            };
            if !failure.retryable() || failures >= self.retries {
                return Err(if failures == 0 {
                    failure
                } else {
                    Failure::GaveUp {
                        attempts: failures + 1,
                        last: Box::new(failure),
                    }
                });
            }
            failures += 1;
            let wait = backoff(failures, self.max_backoff);
            warn!(
                hook = %self.name, host = %self.host, event = %notice.event, error = %failure,
                retry_in = ?wait, "webhook attempt failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One POST, bounded by `timeout` from connecting to the response's end.
    async fn attempt(&self, body: Bytes) -> Result<(), Failure> {
        let mut request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("route-failover/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| Failure::Request(e.to_string()))?;
        if let Some((name, value)) = &self.header {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let exchange = async {
            let response = match &self.transport {
                Transport::Plain(client) => client.request(request).await,
                Transport::Tls(client) => client.request(request).await,
            }
            .map_err(|e| Failure::Request(chain(&e)))?;
            let status = response.status();
            // An error's body says why (Slack: "invalid_token"); a success's
            // is read too, so the connection can be used again.
            let body = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, Failure>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Failure::HttpTimeout(self.timeout))??;
        if status.is_success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(BODY_KEPT)])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Err(Failure::Status {
            status: status.as_u16(),
            retryable: retryable(status),
            body: text,
        })
    }
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// An error and its causes on one line: hyper's own message is terse
/// ("client error (Connect)"), the cause says "connection refused".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_client_builds_on_the_system_roots_and_hides_its_token() {
        // Building reads the CA store; nothing is contacted.
        let header = Some((
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("Bearer s3cret"),
        ));
        let hook = WebhookHook::new(
            "chat",
            "https://hooks.example.com/services/T0/B0/secret",
            header,
            Duration::from_secs(5),
            3,
            Duration::from_secs(30),
        );
        let have_roots = std::path::Path::new("/etc/ssl/certs").is_dir();
        match hook {
            Ok(hook) => {
                assert!(matches!(hook.transport, Transport::Tls(_)));
                let shown = format!("{hook:?}");
                assert!(
                    !shown.contains("s3cret") && !shown.contains("secret"),
                    "{shown}"
                );
                assert!(hook.header.as_ref().unwrap().1.is_sensitive());
            }
            Err(e) => {
                assert!(!have_roots, "with /etc/ssl/certs: {e}");
                assert!(e.contains("ca-certificates"), "{e}");
            }
        }
    }

    #[test]
    fn which_answers_are_worth_another_attempt() {
        for (code, again) in [
            (500, true),
            (503, true),
            (429, true),
            (408, true),
            (400, false),
            (401, false),
            (404, false),
            (301, false),
        ] {
            assert_eq!(
                retryable(StatusCode::from_u16(code).unwrap()),
                again,
                "{code}"
            );
        }
    }
}
