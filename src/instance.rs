//! What the agent learns about the instance it runs on, from the instance
//! metadata service (IMDSv2 only: session tokens, no IMDSv1 fallback).
//!
//! Two kinds of failure are kept apart, because the self-subnet guard
//! depends on the answer. *Off EC2* (metadata disabled by
//! `AWS_EC2_METADATA_DISABLED=true`, or nothing answers the token request:
//! connection refused, timeout) there is nothing to learn; the agent still
//! runs, against LocalStack or in tests, and the guard is skipped with a
//! warning. A service that *answered but failed* (token refused, 5xx, a
//! lookup that failed after the MAC was read, an answer that is not what was
//! asked) means the agent is on EC2 but cannot know its subnet: guessing
//! "not on EC2" there would silently skip the guard, so `run` refuses to
//! start and `check` fails, unless `aws.own_subnet_id` says the subnet.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use aws_config::imds;
use aws_config::imds::client::error::{ImdsError, TokenError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use tracing::{debug, info, warn};

use crate::config::AwsConfig;

/// Facts about this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The region, when instance metadata told it.
    pub region: Option<String>,
    /// The subnet of the instance's primary network interface, or why it is unknown.
    pub subnet: Subnet,
}

/// What instance metadata said about the agent's own subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subnet {
    /// Read from the metadata service.
    Known(String),
    /// Nothing to ask: metadata disabled, nothing answers, or a backend that
    /// does not use it. The string says which.
    OffEc2(String),
    /// The metadata service answered but failed; the string says how.
    Failed(String),
}

impl Default for Instance {
    fn default() -> Self {
        Self {
            region: None,
            subnet: Subnet::OffEc2("instance metadata not asked".to_string()),
        }
    }
}

/// The metadata service answered but could not tell the agent its subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MetadataError {
    pub cause: String,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the instance metadata service answered but failed ({}), so the self-subnet guard \
             cannot learn this instance's subnet. Fix instance metadata (IMDSv2 with session \
             tokens; HttpPutResponseHopLimit >= 2 in a container), or set aws.own_subnet_id to \
             this instance's subnet to bypass it",
            self.cause
        )
    }
}

impl Instance {
    /// The agent's own subnet: `configured` (`aws.own_subnet_id`) first,
    /// then what metadata said. `Ok(None)` off EC2 (the guard is skipped);
    /// an error when the service failed and nothing else says the subnet.
    pub fn own_subnet<'a>(
        &'a self,
        configured: Option<&'a str>,
    ) -> Result<Option<&'a str>, MetadataError> {
        if let Some(subnet) = configured {
            return Ok(Some(subnet));
        }
        match &self.subnet {
            Subnet::Known(subnet) => Ok(Some(subnet)),
            Subnet::OffEc2(_) => Ok(None),
            Subnet::Failed(cause) => Err(MetadataError {
                cause: cause.clone(),
            }),
        }
    }
}

/// True when the environment turns the metadata service off, as the AWS
/// SDKs read it.
fn imds_disabled() -> bool {
    std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// An IMDSv2 client: short timeouts, two attempts (off EC2 nothing answers
/// and startup must not hang), the endpoint from the config when set.
pub fn client(aws: &AwsConfig) -> Result<imds::Client, String> {
    let mut builder = imds::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .max_attempts(2)
        .token_ttl(Duration::from_secs(6 * 3600));
    if let Some(endpoint) = &aws.imds_endpoint {
        builder = builder
            .endpoint(endpoint)
            .map_err(|e| format!("aws.imds_endpoint {endpoint:?}: {e}"))?;
    }
    Ok(builder.build())
}

/// The token request's own error, under the SDK's wrapping.
fn token_error(e: &ImdsError) -> Option<&SdkError<TokenError, HttpResponse>> {
    match e {
        ImdsError::FailedToLoadToken(_) => e.source()?.downcast_ref(),
        _ => None,
    }
}

/// Whether `e` means that nothing answered the token request (the first
/// request of all): off EC2, or a metadata endpoint that does not exist.
fn nothing_answers(e: &ImdsError) -> bool {
    match e {
        ImdsError::FailedToLoadToken(t) => {
            t.is_dispatch_failure() || matches!(token_error(e), Some(SdkError::TimeoutError(_)))
        }
        _ => false,
    }
}

/// What went wrong while `doing` something, in words an operator can act
/// on. A failed token request is named as such, whatever asked for it.
fn describe(doing: &str, e: &ImdsError) -> String {
    let why = match (e, token_error(e)) {
        (_, Some(SdkError::ServiceError(s))) => {
            return format!(
                "the session token request (PUT /latest/api/token) was answered with HTTP {}: {}",
                s.raw().status().as_u16(),
                s.err().to_string().trim_end_matches('.')
            )
        }
        (_, Some(other)) => {
            return format!(
                "the session token request (PUT /latest/api/token) failed: {}",
                DisplayErrorContext(other)
            )
        }
        (ImdsError::ErrorResponse(r), _) => format!("HTTP {}", r.response().status().as_u16()),
        (other, _) => DisplayErrorContext(other).to_string(),
    };
    format!("{doing}: {why}")
}

/// A MAC address as IMDS writes it: six lowercase hex pairs and colons.
fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `subnet-` and 8 or 17 lowercase hex digits.
fn is_subnet_id(text: &str) -> bool {
    text.strip_prefix("subnet-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// Asks the metadata service for the region and the primary interface's subnet.
pub async fn discover(aws: &AwsConfig) -> Instance {
    let off = |why: &str| Instance {
        region: None,
        subnet: Subnet::OffEc2(why.to_string()),
    };
    let failed = |cause: String| {
        warn!(%cause, "instance metadata answered but failed");
        Instance {
            region: None,
            subnet: Subnet::Failed(cause),
        }
    };
    if imds_disabled() {
        debug!("AWS_EC2_METADATA_DISABLED=true: not asking the instance metadata service");
        return off("instance metadata disabled by AWS_EC2_METADATA_DISABLED=true");
    }
    let client = match client(aws) {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot build the metadata client: {e}")),
    };
    let mac = match client.get("/latest/meta-data/mac").await {
        Ok(mac) => mac.as_ref().trim().to_string(),
        Err(e) if nothing_answers(&e) => {
            info!(error = %DisplayErrorContext(&e), "no instance metadata service answers: not on EC2");
            return off("no instance metadata service answers");
        }
        Err(e) => return failed(describe("reading the MAC address", &e)),
    };
    if !is_mac(&mac) {
        return failed(format!(
            "the MAC address it gave, {:?}, is not a MAC address",
            clip(&mac)
        ));
    }
    // The region may come from the config or the environment too; without
    // any, the EC2 client refuses to start and says so.
    let region = match client.get("/latest/meta-data/placement/region").await {
        Ok(r) => Some(r.as_ref().trim().to_string()),
        Err(e) => {
            warn!(error = %describe("reading the region", &e), "instance metadata: no region");
            None
        }
    };
    let subnet = match client
        .get(format!(
            "/latest/meta-data/network/interfaces/macs/{mac}/subnet-id"
        ))
        .await
    {
        Ok(s) if is_subnet_id(s.as_ref().trim()) => Subnet::Known(s.as_ref().trim().to_string()),
        Ok(s) => {
            return failed(format!(
                "the subnet id of interface {mac}, {:?}, is not a subnet id",
                clip(s.as_ref().trim())
            ))
        }
        Err(e) => {
            return failed(describe(
                &format!("reading the subnet of interface {mac}"),
                &e,
            ))
        }
    };
    info!(?region, ?subnet, "instance metadata");
    Instance { region, subnet }
}

/// This instance's id (`i-…`), the default `[ha]` agent id; why not, if
/// the metadata service cannot tell it.
pub async fn instance_id(aws: &AwsConfig) -> Result<String, String> {
    if imds_disabled() {
        return Err("instance metadata is disabled (AWS_EC2_METADATA_DISABLED=true)".to_string());
    }
    let client = client(aws).map_err(|e| format!("cannot build the metadata client: {e}"))?;
    let id = client
        .get("/latest/meta-data/instance-id")
        .await
        .map_err(|e| describe("reading the instance id", &e))?;
    let id = id.as_ref().trim().to_string();
    crate::ha::check_agent_id(&id)
        .map_err(|why| format!("the instance id it gave is unusable: {why}"))?;
    Ok(id)
}

/// At most 40 characters of an unexpected answer, for a log line.
fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(subnet: Subnet) -> Instance {
        Instance {
            region: None,
            subnet,
        }
    }

    #[test]
    fn the_configured_subnet_wins_even_over_a_failed_service() {
        let failed = with(Subnet::Failed("HTTP 500".into()));
        assert_eq!(
            failed.own_subnet(Some("subnet-0123456789abcdef0")),
            Ok(Some("subnet-0123456789abcdef0"))
        );
        let known = with(Subnet::Known("subnet-0aaaaaaaaaaaaaaa0".into()));
        assert_eq!(
            known.own_subnet(Some("subnet-0123456789abcdef0")),
            Ok(Some("subnet-0123456789abcdef0"))
        );
        assert_eq!(known.own_subnet(None), Ok(Some("subnet-0aaaaaaaaaaaaaaa0")));
    }

    #[test]
    fn off_ec2_skips_but_a_failed_service_refuses() {
        assert_eq!(Instance::default().own_subnet(None), Ok(None));
        let e = with(Subnet::Failed("HTTP 500".into()))
            .own_subnet(None)
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("(HTTP 500)"), "{text}");
        assert!(text.contains("set aws.own_subnet_id"), "{text}");
    }

    #[test]
    fn answers_are_checked_for_shape() {
        assert!(is_mac("0e:11:22:33:44:55"));
        assert!(!is_mac("<html>"));
        assert!(!is_mac("0e:11:22:33:44"));
        assert!(is_subnet_id("subnet-0123456789abcdef0"));
        assert!(is_subnet_id("subnet-01234567"));
        assert!(!is_subnet_id("subnet-XYZ"));
        assert!(!is_subnet_id("<html><body>500</body></html>"));
    }
}
