//! The route API the agent needs from EC2, behind one trait.
//!
//! - `ec2`: the real API through aws-sdk-ec2 (LocalStack through an endpoint override).
//! - `memory`: an in-process fake with EC2's semantics and error codes.
//! - `dry_run`: wraps either; reads are real, writes are printed, not made.

pub mod dry_run;
pub mod ec2;
pub mod memory;

use std::fmt;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::model::Action;
use crate::model::{ManagedRoute, RouteTable, Target};

/// What kind of failure an API call had, by EC2 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `RouteAlreadyExists`: a static route for that destination is there.
    RouteAlreadyExists,
    /// `InvalidRoute.NotFound`: no static route for that destination.
    RouteNotFound,
    /// `InvalidRouteTableID.NotFound` / `.Malformed`.
    TableNotFound,
    /// `InvalidNetworkInterfaceID.NotFound` / `.Malformed`.
    EniNotFound,
    /// `RequestLimitExceeded`, `Throttling`: slow down and try again.
    Throttled,
    /// Credentials missing, expired or not allowed (`UnauthorizedOperation` …).
    Auth,
    /// `DryRunOperation`: a `DryRun=true` call that would have succeeded.
    DryRunOk,
    /// 5xx, timeouts, connection failures: try again later.
    Transient,
    /// Anything else, such as `InvalidParameterValue`.
    Other,
}

impl ErrorKind {
    /// Whether the same call may succeed if simply made again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Transient | ErrorKind::Auth
        )
    }
}

/// A failed API call, with the service's own code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CloudError {
    pub kind: ErrorKind,
    /// The EC2 error code, when the service answered.
    pub code: Option<String>,
    pub message: String,
}

impl CloudError {
    pub fn new(kind: ErrorKind, code: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.map(str::to_string),
            message: message.into(),
        }
    }

    /// Classifies an EC2 error code.
    pub fn from_code(code: &str, message: impl Into<String>) -> Self {
        let kind = match code {
            "RouteAlreadyExists" => ErrorKind::RouteAlreadyExists,
            "InvalidRoute.NotFound" => ErrorKind::RouteNotFound,
            "InvalidRouteTableID.NotFound" | "InvalidRouteTableId.Malformed" => {
                ErrorKind::TableNotFound
            }
            "InvalidNetworkInterfaceID.NotFound" | "InvalidNetworkInterfaceId.Malformed" => {
                ErrorKind::EniNotFound
            }
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ErrorKind::Throttled,
            "AuthFailure"
            | "UnauthorizedOperation"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "RequestExpired"
            | "SignatureDoesNotMatch"
            | "OptInRequired" => ErrorKind::Auth,
            "DryRunOperation" => ErrorKind::DryRunOk,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
                ErrorKind::Transient
            }
            _ => ErrorKind::Other,
        };
        Self::new(kind, Some(code), message)
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => write!(f, "{:?}: {}", self.kind, self.message),
        }
    }
}

/// A network interface's `Status` as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EniStatus {
    Available,
    Associated,
    Attaching,
    /// Attached to an instance: the only status in which it forwards.
    InUse,
    Detaching,
    /// A status this version does not know, as EC2 spelled it.
    Other(String),
}

impl EniStatus {
    /// EC2's own spelling (`in-use`, `available`, …).
    pub fn as_str(&self) -> &str {
        match self {
            EniStatus::Available => "available",
            EniStatus::Associated => "associated",
            EniStatus::Attaching => "attaching",
            EniStatus::InUse => "in-use",
            EniStatus::Detaching => "detaching",
            EniStatus::Other(s) => s,
        }
    }
}

impl fmt::Display for EniStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A network interface as the preflight and the appliance checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    pub id: String,
    pub subnet_id: Option<String>,
    pub status: EniStatus,
    /// Whether its attachment's status is `attached`. A route to an
    /// interface that is not attached is a blackhole.
    pub attached: bool,
    /// Must be false on the VPN appliance, or it drops forwarded traffic.
    pub source_dest_check: bool,
}

impl NetworkInterface {
    /// Whether traffic routed to it can reach an instance: `in-use` and attached.
    pub fn is_forwarding_target(&self) -> bool {
        self.status == EniStatus::InUse && self.attached
    }
}

/// A tag call `check` asks permission for (`[ha]`'s verdicts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagCall {
    Create,
    Delete,
}

impl TagCall {
    /// The EC2 operation name.
    pub fn op(self) -> &'static str {
        match self {
            TagCall::Create => "CreateTags",
            TagCall::Delete => "DeleteTags",
        }
    }
}

/// The calls the agent makes. Implementations return EC2's semantics:
/// a duplicate create is `RouteAlreadyExists`, a missing delete is
/// `RouteNotFound`, an unknown table or ENI is reported as such.
#[async_trait]
pub trait RouteApi: Send + Sync {
    /// Reads those of the given tables that exist, each once, as EC2's
    /// `route-table-id` filter does: a table that does not exist (deleted,
    /// or a typo) is simply absent from the answer, so one missing table
    /// cannot hide the others. (Naming the ids in `RouteTableIds` instead
    /// fails the whole call with `InvalidRouteTableID.NotFound`.) No ids,
    /// no tables: never "every table in the account".
    async fn describe_route_tables(&self, ids: &[String]) -> Result<Vec<RouteTable>, CloudError>;

    /// Reads those of the given network interfaces that exist, each once, as
    /// EC2's `network-interface-id` filter does: an interface that does not
    /// exist is absent from the answer, not an error that hides the others.
    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<NetworkInterface>, CloudError>;

    async fn create_route(&self, route: &ManagedRoute) -> Result<(), CloudError>;

    async fn replace_route(&self, route: &ManagedRoute) -> Result<(), CloudError>;

    /// Points the static route for `destination` back at `target` (any
    /// kind: a transit gateway, NAT gateway, peering, …), undoing a takeover.
    async fn restore_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
        target: &Target,
    ) -> Result<(), CloudError>;

    async fn delete_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
    ) -> Result<(), CloudError>;

    /// The route table `subnet_id` uses: its explicit association, or else
    /// its VPC's main table.
    async fn subnet_route_table(&self, subnet_id: &str) -> Result<String, CloudError>;

    /// Whether the credentials may make `action`, asked with EC2's
    /// `DryRun=true` (nothing changes): `Some(true)` for `DryRunOperation`,
    /// `Some(false)` for `UnauthorizedOperation`, `None` when the endpoint
    /// ignores DryRun (LocalStack does) and so cannot be asked safely.
    async fn is_permitted(&self, action: &Action) -> Result<Option<bool>, CloudError>;

    /// As [`is_permitted`](Self::is_permitted), for a tag call on
    /// `resource_id` with the tag key `key` (an IAM condition on tag keys
    /// judges it). The default refuses, like the tag calls themselves.
    async fn is_permitted_tags(
        &self,
        resource_id: &str,
        call: TagCall,
        key: &str,
    ) -> Result<Option<bool>, CloudError> {
        let _ = key;
        Err(unsupported(call.op(), resource_id))
    }

    /// True for the dry-run wrapper: its writes are printed, not made, so
    /// the agent says "would", never "changed" or "converged".
    fn is_dry_run(&self) -> bool {
        false
    }

    /// Sets tags on a route table (EC2 `CreateTags`): a key already there
    /// gets the new value. More than 50 tags on the resource fail the whole
    /// call with `TagLimitExceeded`; an unknown table is
    /// `InvalidRouteTableID.NotFound`. No tags, no call.
    ///
    /// The default refuses, so that a wrapper which forgets to forward it
    /// fails loudly instead of dropping a write.
    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &[(String, String)],
    ) -> Result<(), CloudError> {
        let _ = tags;
        Err(unsupported("CreateTags", resource_id))
    }

    /// Removes tags (EC2 `DeleteTags`): a key with `None` whatever its
    /// value, a key with `Some(value)` only if the tag still holds exactly
    /// that value (a conditional delete, applied by EC2 itself). Keys that
    /// are not there are no error. No tags, no call: EC2 would read an
    /// empty list as "delete every tag".
    async fn delete_tags(
        &self,
        resource_id: &str,
        tags: &[(String, Option<String>)],
    ) -> Result<(), CloudError> {
        let _ = tags;
        Err(unsupported("DeleteTags", resource_id))
    }
}

fn unsupported(op: &str, resource_id: &str) -> CloudError {
    CloudError::new(
        ErrorKind::Other,
        None,
        format!("{op} on {resource_id}: not implemented by this backend"),
    )
}
