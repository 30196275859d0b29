//! What the agent learns about the instance it runs on, from the instance
//! metadata service (IMDSv2 only: session tokens, no IMDSv1 fallback).
//!
//! Off EC2 (no metadata service answers, or `AWS_EC2_METADATA_DISABLED=true`)
//! there is nothing to learn; the agent still runs, against LocalStack or
//! in tests, with what the config says.

use std::time::Duration;

use aws_config::imds;
use tracing::{debug, info, warn};

use crate::config::AwsConfig;

/// Facts about this instance. Each is `None` when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    pub region: Option<String>,
    /// The subnet of the instance's primary network interface.
    pub subnet_id: Option<String>,
    /// Whether the metadata service answered at all.
    pub on_ec2: bool,
}

/// True when the environment turns the metadata service off, as the AWS
/// SDKs read it.
fn imds_disabled() -> bool {
    std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// An IMDSv2 client: short timeouts, one attempt (off EC2 nothing answers
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

/// Asks the metadata service for the region and the primary interface's subnet.
pub async fn discover(aws: &AwsConfig) -> Instance {
    if imds_disabled() {
        debug!("AWS_EC2_METADATA_DISABLED=true: not asking the instance metadata service");
        return Instance::default();
    }
    let client = match client(aws) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the metadata client");
            return Instance::default();
        }
    };
    let mac = match client.get("/latest/meta-data/mac").await {
        Ok(mac) => mac.as_ref().trim().to_string(),
        Err(e) => {
            info!(error = %e, "no instance metadata service: not on EC2, or IMDSv2 is unreachable");
            return Instance::default();
        }
    };
    let region = client
        .get("/latest/meta-data/placement/region")
        .await
        .ok()
        .map(|r| r.as_ref().trim().to_string());
    let subnet_id = client
        .get(format!(
            "/latest/meta-data/network/interfaces/macs/{mac}/subnet-id"
        ))
        .await
        .ok()
        .map(|s| s.as_ref().trim().to_string());
    info!(?region, ?subnet_id, "instance metadata");
    Instance {
        region,
        subnet_id,
        on_ec2: true,
    }
}
