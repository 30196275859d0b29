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

/// A VPC with a subnet, `tables` route tables and `enis` network interfaces.
pub struct World {
    pub vpc: String,
    pub subnet: String,
    pub tables: Vec<String>,
    pub enis: Vec<String>,
}

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
    }
}
