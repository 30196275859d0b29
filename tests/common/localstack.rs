//! LocalStack helpers: an SDK client on loopback with dummy credentials, and
//! a small VPC world (tables, ENIs) built through the real EC2 API.

#![allow(dead_code)] // shared by several test crates; each uses part of it

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;

pub fn client(endpoint: &str) -> Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "localstack-test",
        ))
        .build();
    Client::from_conf(config)
}

/// A VPC with a subnet, `tables` route tables and `enis` network interfaces,
/// and a virtual private gateway that every table routes 10.0.0.0/8 and
/// fd00::/8 to: the Direct Connect routes (LocalStack does not propagate
/// routes, so static ones to the VGW stand in for them, which is what the
/// failback guard accepts too).
pub struct World {
    pub vpc: String,
    pub subnet: String,
    pub tables: Vec<String>,
    pub enis: Vec<String>,
    pub vgw: String,
}

/// The covering prefixes every world's tables send to the VGW.
pub const DX_PREFIXES: [&str; 2] = ["10.0.0.0/8", "fd00::/8"];

fn tagged(kind: ResourceType, test: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(
            Tag::builder()
                .key("route-failover-test")
                .value(test)
                .build(),
        )
        .build()
}

pub async fn world(client: &Client, test: &str, tables: usize, enis: usize) -> World {
    let vpc = client
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .tag_specifications(tagged(ResourceType::Vpc, test))
        .send()
        .await
        .expect("CreateVpc")
        .vpc
        .and_then(|v| v.vpc_id)
        .expect("vpc id");
    let subnet = client
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.0.1.0/24")
        .send()
        .await
        .expect("CreateSubnet")
        .subnet
        .and_then(|s| s.subnet_id)
        .expect("subnet id");
    let mut table_ids = Vec::new();
    for _ in 0..tables {
        let id = client
            .create_route_table()
            .vpc_id(&vpc)
            .tag_specifications(tagged(ResourceType::RouteTable, test))
            .send()
            .await
            .expect("CreateRouteTable")
            .route_table
            .and_then(|t| t.route_table_id)
            .expect("route table id");
        table_ids.push(id);
    }
    let vgw = new_vgw(client, &vpc).await;
    for table in &table_ids {
        for prefix in DX_PREFIXES {
            let call = client.create_route().route_table_id(table).gateway_id(&vgw);
            let call = if prefix.contains(':') {
                call.destination_ipv6_cidr_block(prefix)
            } else {
                call.destination_cidr_block(prefix)
            };
            call.send().await.expect("CreateRoute to the VGW");
        }
    }
    let mut eni_ids = Vec::new();
    for _ in 0..enis {
        let id = client
            .create_network_interface()
            .subnet_id(&subnet)
            .send()
            .await
            .expect("CreateNetworkInterface")
            .network_interface
            .and_then(|n| n.network_interface_id)
            .expect("eni id");
        eni_ids.push(id);
    }
    World {
        vpc,
        subnet,
        tables: table_ids,
        enis: eni_ids,
        vgw,
    }
}

/// Attaches every interface of the world to one new instance (device
/// index 1, 2, …), as a VPN appliance's interface is: `in-use`, attached.
/// Returns the attachment ids, in the order of `w.enis`.
pub async fn attach_enis(client: &Client, w: &World) -> Vec<String> {
    // LocalStack ships a catalogue of images; any one will do.
    let image = client
        .describe_images()
        .send()
        .await
        .expect("DescribeImages")
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_string))
        .expect("LocalStack lists an image");
    let instance = client
        .run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .subnet_id(&w.subnet)
        .send()
        .await
        .expect("RunInstances")
        .instances()
        .first()
        .and_then(|i| i.instance_id().map(str::to_string))
        .expect("instance id");
    let mut attachments = Vec::new();
    for (i, eni) in w.enis.iter().enumerate() {
        let id = client
            .attach_network_interface()
            .network_interface_id(eni)
            .instance_id(&instance)
            .device_index(i32::try_from(i).unwrap() + 1)
            .send()
            .await
            .expect("AttachNetworkInterface")
            .attachment_id
            .expect("attachment id");
        attachments.push(id);
    }
    attachments
}

/// A virtual private gateway attached to the world's VPC; returns its id.
pub async fn attach_vgw(client: &Client, w: &World) -> String {
    new_vgw(client, &w.vpc).await
}

async fn new_vgw(client: &Client, vpc: &str) -> String {
    let vgw = client
        .create_vpn_gateway()
        .r#type(aws_sdk_ec2::types::GatewayType::Ipsec1)
        .send()
        .await
        .expect("CreateVpnGateway")
        .vpn_gateway
        .and_then(|g| g.vpn_gateway_id)
        .expect("vgw id");
    client
        .attach_vpn_gateway()
        .vpn_gateway_id(&vgw)
        .vpc_id(vpc)
        .send()
        .await
        .expect("AttachVpnGateway");
    vgw
}

/// Polls `count` (our routes as LocalStack shows them) until it is `want`;
/// how long that took. Fails the test after `within`.
pub async fn wait_count<F, Fut>(
    count: F,
    want: usize,
    within: std::time::Duration,
) -> std::time::Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let started = std::time::Instant::now();
    loop {
        if count().await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "LocalStack did not reach {want} routes within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Asserts that `count` stays at `want` for `d`, polling.
pub async fn hold_count<F, Fut>(count: F, want: usize, d: std::time::Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < d {
        assert_eq!(
            count().await,
            want,
            "routes changed after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
