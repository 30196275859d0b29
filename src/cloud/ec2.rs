//! The real route API: EC2 through aws-sdk-ec2.
//!
//! Errors are classified by EC2's error code, since the SDK models none of
//! them as variants. Throttling and 5xx are retried inside the SDK with
//! capped exponential backoff and jitter; what still fails is retried by the
//! agent on a later tick.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    AttachmentStatus, Filter, NetworkInterfaceStatus, RouteOrigin, RouteState as Ec2RouteState, Tag,
};
use aws_sdk_ec2::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use ipnet::IpNet;
use tokio::sync::OnceCell;

use super::{CloudError, EniStatus, ErrorKind, NetworkInterface, RouteApi, TagCall};
use crate::config::AwsConfig;
use crate::instance::{self, Instance};
use crate::model::Action;
use crate::model::{ManagedRoute, Origin, Route, RouteState, RouteTable, Target, TargetKind};

/// The EC2 backend.
#[derive(Debug, Clone)]
pub struct Ec2RouteApi {
    client: Client,
    /// Whether the endpoint honours `DryRun` (asked once, harmlessly).
    dry_run_honoured: Arc<OnceCell<bool>>,
}

/// Attempts per call: the first and three retries.
const MAX_ATTEMPTS: u32 = 4;

/// EC2 refuses more filter values than this in one call (`FilterLimitExceeded`).
const MAX_FILTER_VALUES: usize = 200;

/// SDK settings: bounded timeouts on every call, and standard retries
/// (throttling, 5xx and connection errors; capped exponential backoff with
/// full jitter).
fn sdk_loader(aws: &AwsConfig) -> aws_config::ConfigLoader {
    let attempt = aws.api_timeout;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(5)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(attempt.min(Duration::from_secs(3)))
                .read_timeout(attempt)
                .operation_attempt_timeout(attempt)
                .operation_timeout(attempt * MAX_ATTEMPTS + Duration::from_secs(10))
                .build(),
        );
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader
}

impl Ec2RouteApi {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            dry_run_honoured: Arc::new(OnceCell::new()),
        }
    }

    /// Asks a read-only call with `DryRun=true`: EC2 answers
    /// `DryRunOperation`; an endpoint that answers normally ignores DryRun,
    /// and a mutating call "with DryRun" would really change the table.
    async fn honours_dry_run(&self, table: &str) -> Result<bool, CloudError> {
        self.dry_run_honoured
            .get_or_try_init(|| async {
                match self
                    .client
                    .describe_route_tables()
                    .dry_run(true)
                    .route_table_ids(table)
                    .send()
                    .await
                    .map_err(classify)
                {
                    Ok(_) => Ok(false),
                    Err(e) if e.kind == ErrorKind::DryRunOk => Ok(true),
                    // Not allowed to describe: the check for that comes elsewhere,
                    // and EC2 did look at DryRun to say so.
                    Err(e) if e.code.as_deref() == Some("UnauthorizedOperation") => Ok(true),
                    Err(e) => Err(e),
                }
            })
            .await
            .copied()
    }

    /// Resolves the region (config, then instance metadata, then the
    /// environment and profile) and credentials (the standard chain, whose
    /// instance-profile step uses the configured metadata endpoint), and
    /// builds a client. The SDK refreshes expiring credentials by itself.
    pub async fn connect(aws: &AwsConfig, instance: &Instance) -> Result<Self, CloudError> {
        Self::connect_with(aws, instance, None).await
    }

    /// As [`connect`](Self::connect), with fixed credentials instead of the
    /// standard chain when given (tests against fake endpoints use this).
    pub async fn connect_with(
        aws: &AwsConfig,
        instance: &Instance,
        credentials: Option<aws_sdk_ec2::config::Credentials>,
    ) -> Result<Self, CloudError> {
        let mut loader = sdk_loader(aws);
        // Unset here, the SDK's own chain (environment, profile) decides.
        if let Some(region) = aws.region.as_ref().or(instance.region.as_ref()) {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        } else if aws.imds_endpoint.is_some() {
            let imds =
                instance::client(aws).map_err(|e| CloudError::new(ErrorKind::Other, None, e))?;
            let chain =
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .imds_client(imds)
                    .build()
                    .await;
            loader = loader.credentials_provider(chain);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(CloudError::new(
                ErrorKind::Other,
                None,
                "no AWS region: set aws.region in the config or AWS_REGION in the environment",
            ));
        }
        Ok(Self::new(Client::new(&sdk)))
    }

    /// Makes one route call, or (with `dry_run`) only asks whether it may.
    async fn route_call(
        &self,
        op: Op,
        route: &ManagedRoute,
        dry_run: bool,
    ) -> Result<(), CloudError> {
        let destination = route.destination.to_string();
        let (v4, v6) = match route.destination {
            IpNet::V4(_) => (Some(destination), None),
            IpNet::V6(_) => (None, Some(destination)),
        };
        let table = &route.route_table_id;
        let eni = &route.target_eni;
        match op {
            Op::Create => {
                let out = self
                    .client
                    .create_route()
                    .dry_run(dry_run)
                    .route_table_id(table)
                    .network_interface_id(eni)
                    .set_destination_cidr_block(v4)
                    .set_destination_ipv6_cidr_block(v6)
                    .send()
                    .await
                    .map_err(classify)?;
                if out.r#return() == Some(false) {
                    return Err(CloudError::new(
                        ErrorKind::Other,
                        None,
                        format!("CreateRoute for {route} returned false"),
                    ));
                }
            }
            Op::Replace => {
                self.client
                    .replace_route()
                    .dry_run(dry_run)
                    .route_table_id(table)
                    .network_interface_id(eni)
                    .set_destination_cidr_block(v4)
                    .set_destination_ipv6_cidr_block(v6)
                    .send()
                    .await
                    .map_err(classify)?;
            }
            Op::Delete => {
                self.client
                    .delete_route()
                    .dry_run(dry_run)
                    .route_table_id(table)
                    .set_destination_cidr_block(v4)
                    .set_destination_ipv6_cidr_block(v6)
                    .send()
                    .await
                    .map_err(classify)?;
            }
        }
        Ok(())
    }
}

/// The three route calls.
#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Replace,
    Delete,
}

/// What a call made with DryRun=true says of the permission to make `op`:
/// DryRunOperation is yes, UnauthorizedOperation no.
fn dry_run_answer(result: Result<(), CloudError>, op: &str) -> Result<Option<bool>, CloudError> {
    match result {
        Err(e) if e.kind == ErrorKind::DryRunOk => Ok(Some(true)),
        Err(e) if e.code.as_deref() == Some("UnauthorizedOperation") => Ok(Some(false)),
        Err(e) => Err(e),
        // An endpoint that ignores DryRun would have made the change.
        Ok(()) => Err(CloudError::new(
            ErrorKind::Other,
            None,
            format!("{op} with DryRun=true succeeded instead of answering DryRunOperation"),
        )),
    }
}

/// Turns an SDK error into a classified [`CloudError`].
fn classify<E>(err: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let message = service.err().message().unwrap_or("").to_string();
            match service.err().code() {
                Some(code) => {
                    let mut e = CloudError::from_code(code, message);
                    if e.kind == ErrorKind::Other && status >= 500 {
                        e.kind = ErrorKind::Transient;
                    }
                    e
                }
                None if status >= 500 => CloudError::new(
                    ErrorKind::Transient,
                    None,
                    format!("HTTP {status}: {message}"),
                ),
                None => {
                    CloudError::new(ErrorKind::Other, None, format!("HTTP {status}: {message}"))
                }
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            CloudError::new(
                ErrorKind::Transient,
                None,
                DisplayErrorContext(&err).to_string(),
            )
        }
        _ => CloudError::new(
            ErrorKind::Other,
            None,
            DisplayErrorContext(&err).to_string(),
        ),
    }
}

/// `name` filters for the distinct `ids`, at most [`MAX_FILTER_VALUES`]
/// values each; none for no ids. A filter, not the explicit id list: an
/// unknown id is left out of the answer instead of failing the whole call
/// (and no ids must never mean "everything").
fn id_filters(name: &str, ids: &[String]) -> Vec<Filter> {
    let mut wanted: Vec<String> = ids.to_vec();
    wanted.sort();
    wanted.dedup();
    wanted
        .chunks(MAX_FILTER_VALUES)
        .map(|chunk| {
            Filter::builder()
                .name(name)
                .set_values(Some(chunk.to_vec()))
                .build()
        })
        .collect()
}

fn convert_route(r: &aws_sdk_ec2::types::Route) -> Option<Route> {
    // Prefix-list routes have no CIDR and are never ours.
    let destination: IpNet = r
        .destination_cidr_block()
        .or(r.destination_ipv6_cidr_block())?
        .parse()
        .ok()?;
    let target = if let Some(eni) = r.network_interface_id() {
        Target::NetworkInterface(eni.to_string())
    } else if let Some(gw) = r.gateway_id() {
        Target::Gateway(gw.to_string())
    } else {
        let other = r
            .nat_gateway_id()
            .or(r.transit_gateway_id())
            .or(r.vpc_peering_connection_id())
            .or(r.instance_id())
            .or(r.local_gateway_id())
            .or(r.carrier_gateway_id())
            .or(r.egress_only_internet_gateway_id())
            .or(r.core_network_arn())
            .unwrap_or("unknown");
        Target::Other(other.to_string())
    };
    let origin = match r.origin() {
        Some(RouteOrigin::CreateRouteTable) => Origin::CreateRouteTable,
        Some(RouteOrigin::EnableVgwRoutePropagation | RouteOrigin::Advertisement) => {
            Origin::Propagated
        }
        // Unknown origins count as static: static routes are only ever
        // touched when they are provably ours.
        _ => Origin::CreateRoute,
    };
    let state = match r.state() {
        Some(Ec2RouteState::Blackhole) => RouteState::Blackhole,
        _ => RouteState::Active,
    };
    Some(Route {
        destination,
        target,
        origin,
        state,
    })
}

fn convert_table(t: &aws_sdk_ec2::types::RouteTable) -> RouteTable {
    let associations = t.associations();
    RouteTable {
        id: t.route_table_id().unwrap_or_default().to_string(),
        vpc_id: t.vpc_id().map(str::to_string),
        subnets: associations
            .iter()
            .filter_map(|a| a.subnet_id().map(str::to_string))
            .collect(),
        main: associations.iter().any(|a| a.main() == Some(true)),
        routes: t.routes().iter().filter_map(convert_route).collect(),
        tags: t
            .tags()
            .iter()
            .filter_map(|tag| Some((tag.key()?.to_string(), tag.value()?.to_string())))
            .collect(),
    }
}

fn convert_eni(n: &aws_sdk_ec2::types::NetworkInterface) -> NetworkInterface {
    let status = match n.status() {
        Some(NetworkInterfaceStatus::Available) => EniStatus::Available,
        Some(NetworkInterfaceStatus::Associated) => EniStatus::Associated,
        Some(NetworkInterfaceStatus::Attaching) => EniStatus::Attaching,
        Some(NetworkInterfaceStatus::InUse) => EniStatus::InUse,
        Some(NetworkInterfaceStatus::Detaching) => EniStatus::Detaching,
        Some(other) => EniStatus::Other(other.as_str().to_string()),
        None => EniStatus::Other(String::new()),
    };
    NetworkInterface {
        id: n.network_interface_id().unwrap_or_default().to_string(),
        subnet_id: n.subnet_id().map(str::to_string),
        status,
        attached: n.attachment().and_then(|a| a.status()) == Some(&AttachmentStatus::Attached),
        // Unknown counts as on: the check then asks the operator to look.
        source_dest_check: n.source_dest_check().unwrap_or(true),
    }
}

#[async_trait]
impl RouteApi for Ec2RouteApi {
    async fn describe_route_tables(&self, ids: &[String]) -> Result<Vec<RouteTable>, CloudError> {
        let filters = id_filters("route-table-id", ids);
        let mut tables = Vec::with_capacity(ids.len());
        for filter in filters {
            let mut token = None;
            loop {
                let out = self
                    .client
                    .describe_route_tables()
                    .filters(filter.clone())
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(classify)?;
                tables.extend(out.route_tables().iter().map(convert_table));
                token = out.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(tables)
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<NetworkInterface>, CloudError> {
        let filters = id_filters("network-interface-id", ids);
        let mut enis = Vec::with_capacity(ids.len());
        for filter in filters {
            let mut token = None;
            loop {
                let out = self
                    .client
                    .describe_network_interfaces()
                    .filters(filter.clone())
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(classify)?;
                enis.extend(out.network_interfaces().iter().map(convert_eni));
                token = out.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(enis)
    }

    async fn create_route(&self, route: &ManagedRoute) -> Result<(), CloudError> {
        self.route_call(Op::Create, route, false).await
    }

    async fn replace_route(&self, route: &ManagedRoute) -> Result<(), CloudError> {
        self.route_call(Op::Replace, route, false).await
    }

    async fn restore_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
        target: &Target,
    ) -> Result<(), CloudError> {
        let text = destination.to_string();
        let (v4, v6) = match destination {
            IpNet::V4(_) => (Some(text), None),
            IpNet::V6(_) => (None, Some(text)),
        };
        let call = self
            .client
            .replace_route()
            .route_table_id(route_table_id)
            .set_destination_cidr_block(v4)
            .set_destination_ipv6_cidr_block(v6);
        let id = target.id();
        let call = match target.kind() {
            Some(TargetKind::NetworkInterface) => call.network_interface_id(id),
            Some(TargetKind::Gateway) => call.gateway_id(id),
            Some(TargetKind::TransitGateway) => call.transit_gateway_id(id),
            Some(TargetKind::NatGateway) => call.nat_gateway_id(id),
            Some(TargetKind::VpcPeering) => call.vpc_peering_connection_id(id),
            Some(TargetKind::Instance) => call.instance_id(id),
            Some(TargetKind::EgressOnlyGateway) => call.egress_only_internet_gateway_id(id),
            Some(TargetKind::LocalGateway) => call.local_gateway_id(id),
            Some(TargetKind::CarrierGateway) => call.carrier_gateway_id(id),
            Some(TargetKind::VpcEndpoint) => call.vpc_endpoint_id(id),
            Some(TargetKind::CoreNetwork) => call.core_network_arn(id),
            None => {
                return Err(CloudError::new(
                    ErrorKind::Other,
                    None,
                    format!("cannot point {route_table_id} {destination} back at {target}: unknown kind of target"),
                ))
            }
        };
        call.send().await.map_err(classify)?;
        Ok(())
    }

    async fn delete_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
    ) -> Result<(), CloudError> {
        let route = ManagedRoute::destination_only(route_table_id, destination);
        self.route_call(Op::Delete, &route, false).await
    }

    async fn subnet_route_table(&self, subnet_id: &str) -> Result<String, CloudError> {
        let filter = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
        let explicit = self
            .client
            .describe_route_tables()
            .filters(filter("association.subnet-id", subnet_id))
            .send()
            .await
            .map_err(classify)?;
        if let Some(id) = explicit
            .route_tables()
            .first()
            .and_then(|t| t.route_table_id())
        {
            return Ok(id.to_string());
        }
        // No explicit association: the subnet uses its VPC's main table.
        let subnets = self
            .client
            .describe_subnets()
            .subnet_ids(subnet_id)
            .send()
            .await
            .map_err(classify)?;
        let vpc = subnets
            .subnets()
            .first()
            .and_then(|s| s.vpc_id())
            .ok_or_else(|| {
                CloudError::new(
                    ErrorKind::Other,
                    None,
                    format!("subnet {subnet_id} has no VPC"),
                )
            })?;
        let main = self
            .client
            .describe_route_tables()
            .filters(filter("vpc-id", vpc))
            .filters(filter("association.main", "true"))
            .send()
            .await
            .map_err(classify)?;
        main.route_tables()
            .first()
            .and_then(|t| t.route_table_id())
            .map(str::to_string)
            .ok_or_else(|| {
                CloudError::new(
                    ErrorKind::Other,
                    None,
                    format!("VPC {vpc} has no main route table"),
                )
            })
    }

    async fn is_permitted(&self, action: &Action) -> Result<Option<bool>, CloudError> {
        let route = action.route();
        if !self.honours_dry_run(&route.route_table_id).await? {
            return Ok(None);
        }
        let op = match action {
            Action::Create(_) => Op::Create,
            Action::Replace { .. } | Action::Retarget { .. } | Action::Restore { .. } => {
                Op::Replace
            }
            Action::Delete(_) => Op::Delete,
        };
        dry_run_answer(self.route_call(op, route, true).await, action.op())
    }

    async fn is_permitted_tags(
        &self,
        resource_id: &str,
        call: TagCall,
        key: &str,
    ) -> Result<Option<bool>, CloudError> {
        if !self.honours_dry_run(resource_id).await? {
            return Ok(None);
        }
        // A value that is never a verdict: even an endpoint that ignored
        // DryRun would write nothing a peer reads.
        let tag = Tag::builder().key(key).value("check").build();
        let result = match call {
            TagCall::Create => self
                .client
                .create_tags()
                .dry_run(true)
                .resources(resource_id)
                .tags(tag)
                .send()
                .await
                .map(|_| ())
                .map_err(classify),
            TagCall::Delete => self
                .client
                .delete_tags()
                .dry_run(true)
                .resources(resource_id)
                .tags(tag)
                .send()
                .await
                .map(|_| ())
                .map_err(classify),
        };
        dry_run_answer(result, call.op())
    }

    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &[(String, String)],
    ) -> Result<(), CloudError> {
        if tags.is_empty() {
            return Ok(());
        }
        self.client
            .create_tags()
            .resources(resource_id)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn delete_tags(
        &self,
        resource_id: &str,
        tags: &[(String, Option<String>)],
    ) -> Result<(), CloudError> {
        // An empty list would delete every tag on the resource.
        if tags.is_empty() {
            return Ok(());
        }
        self.client
            .delete_tags()
            .resources(resource_id)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).set_value(v.clone()).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}
