//! Instance metadata (IMDSv2) and the self-subnet guard, on the real binary
//! against LocalStack, with a fake metadata service on loopback.

#[path = "common/gate.rs"]
mod gate;
#[path = "common/http.rs"]
mod http;
#[path = "common/localstack.rs"]
mod localstack;

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use http::{Request, Response};

const BIN: &str = env!("CARGO_BIN_EXE_route-failover");
const MAC: &str = "0e:11:22:33:44:55";
const TOKEN: &str = "fake-imdsv2-token";

fn text(status: u16, body: &str) -> Response {
    Response::Reply {
        status,
        content_type: "text/plain",
        headers: vec![],
        body: body.to_string(),
    }
}

/// A metadata service that insists on IMDSv2 session tokens, as the agent's
/// instance would with `HttpTokens=required`. Records (method, path, token?).
async fn fake_imds(subnet: String, v2: bool) -> (String, Arc<Mutex<Vec<(String, String, bool)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let url = http::serve(move |r: Request| {
        let has_token = r.header("x-aws-ec2-metadata-token") == Some(TOKEN);
        log.lock()
            .unwrap()
            .push((r.method.clone(), r.path.clone(), has_token));
        if r.method == "PUT" && r.path == "/latest/api/token" {
            return match r.header("x-aws-ec2-metadata-token-ttl-seconds") {
                Some(ttl) if v2 => Response::Reply {
                    status: 200,
                    content_type: "text/plain",
                    headers: vec![("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())],
                    body: TOKEN.to_string(),
                },
                _ => text(403, "Forbidden"),
            };
        }
        if v2 && !has_token {
            return text(401, "Unauthorized");
        }
        match r.path.as_str() {
            "/latest/meta-data/mac" => text(200, MAC),
            "/latest/meta-data/placement/region" => text(200, "us-east-1"),
            p if p == format!("/latest/meta-data/network/interfaces/macs/{MAC}/subnet-id") => {
                text(200, &subnet)
            }
            _ => text(404, "Not Found"),
        }
    })
    .await;
    (url, seen)
}

/// Region and own subnet come from the fake metadata service, not the config.
fn config(
    dir: &tempfile::TempDir,
    endpoint: &str,
    imds: &str,
    table: &str,
    eni: &str,
) -> std::path::PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"[aws]
endpoint_url = "{endpoint}"
imds_endpoint = "{imds}"

[probe]
targets = ["198.18.0.10"]

[[routes]]
route_table_id = "{table}"
destination = "10.1.0.0/16"
target_eni = "{eni}"
"#
        ),
    )
    .unwrap();
    path
}

/// Runs the binary with the metadata service enabled, but only the fake one.
fn route_failover(args: &[&str], imds: &str, dir: &tempfile::TempDir) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env_remove("AWS_REGION")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
        .env("RUNTIME_DIRECTORY", dir.path())
        .output()
        .unwrap()
}

async fn associate(client: &aws_sdk_ec2::Client, table: &str, subnet: &str) {
    client
        .associate_route_table()
        .route_table_id(table)
        .subnet_id(subnet)
        .send()
        .await
        .expect("AssociateRouteTable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_to_manage_the_agents_own_table() {
    let Some(endpoint) =
        gate::require_localstack("the_guard_refuses_to_manage_the_agents_own_table")
    else {
        return;
    };
    let client = localstack::client(&endpoint);
    let w = localstack::world(&client, "imds-self", 1, 1).await;
    associate(&client, &w.tables[0], &w.subnet).await;
    let (imds, seen) = fake_imds(w.subnet.clone(), true).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &endpoint, &imds, &w.tables[0], &w.enis[0]);
    let cfg = cfg.to_str().unwrap();

    let out = route_failover(&["check", "--config", cfg], &imds, &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stdout = format!(
        "{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "✗ route table {} is managed, but it is the table of this instance's own subnet {}",
            w.tables[0], w.subnet
        )),
        "{stdout}"
    );

    let out = route_failover(&["run", "--config", cfg], &imds, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("allow_self_subnet"), "{stderr}");
    assert!(!stderr.contains("started"), "it started anyway: {stderr}");

    // Every metadata read carried the session token: IMDSv2 only.
    let seen = seen.lock().unwrap();
    assert!(seen
        .iter()
        .any(|(m, p, _)| m == "PUT" && p == "/latest/api/token"));
    assert!(
        seen.iter()
            .filter(|(m, _, _)| m == "GET")
            .all(|(_, _, token)| *token),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_on_an_unmanaged_table_passes_and_the_main_table_counts() {
    let Some(endpoint) =
        gate::require_localstack("a_subnet_on_an_unmanaged_table_passes_and_the_main_table_counts")
    else {
        return;
    };
    let client = localstack::client(&endpoint);
    let w = localstack::world(&client, "imds-clear", 2, 1).await;
    let dir = tempfile::tempdir().unwrap();
    // The agent's subnet uses table 1; table 0 is managed.
    associate(&client, &w.tables[1], &w.subnet).await;
    let (imds, _) = fake_imds(w.subnet.clone(), true).await;
    let cfg = config(&dir, &endpoint, &imds, &w.tables[0], &w.enis[0]);
    let out = route_failover(&["check", "--config", cfg.to_str().unwrap()], &imds, &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // LocalStack ignores DryRun: check must notice and not ask, since the
    // "dry" create would really create the route.
    assert!(
        stdout.contains(&format!(
            "! IAM not checked for CreateRoute on {}",
            w.tables[0]
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("✗ network interface") && stdout.contains("--no-source-dest-check"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "✓ own subnet {} uses {}, which is not managed",
            w.subnet, w.tables[1]
        )),
        "{stdout}"
    );

    // A subnet without an explicit association follows the VPC's main table.
    let main = client
        .describe_route_tables()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(&w.vpc)
                .build(),
        )
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("association.main")
                .values("true")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .route_tables()[0]
        .route_table_id()
        .unwrap()
        .to_string();
    let other = client
        .create_subnet()
        .vpc_id(&w.vpc)
        .cidr_block("10.0.2.0/24")
        .send()
        .await
        .unwrap()
        .subnet
        .and_then(|s| s.subnet_id)
        .unwrap();
    let (imds, _) = fake_imds(other.clone(), true).await;
    let cfg = config(&dir, &endpoint, &imds, &main, &w.enis[0]);
    let out = route_failover(&["check", "--config", cfg.to_str().unwrap()], &imds, &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("✗ route table {main} is managed, but it is the table of this instance's own subnet {other}")), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_imdsv1_fallback() {
    let Some(endpoint) = gate::require_localstack("no_imdsv1_fallback") else {
        return;
    };
    let client = localstack::client(&endpoint);
    let w = localstack::world(&client, "imds-v1", 1, 1).await;
    associate(&client, &w.tables[0], &w.subnet).await;
    // This fake answers plain GETs (IMDSv1) but refuses tokens.
    let (imds, seen) = fake_imds(w.subnet.clone(), false).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &endpoint, &imds, &w.tables[0], &w.enis[0]);
    let out = Command::new(BIN)
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Without IMDSv2 the agent learns nothing, and says the guard was skipped.
    assert!(stdout.contains("! own subnet unknown"), "{stdout}");
    let seen = seen.lock().unwrap();
    assert!(
        !seen
            .iter()
            .any(|(m, p, _)| m == "GET" && p.starts_with("/latest/meta-data")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_ec2_own_subnet_id_drives_the_guard() {
    let Some(endpoint) = gate::require_localstack("off_ec2_own_subnet_id_drives_the_guard") else {
        return;
    };
    let client = localstack::client(&endpoint);
    let w = localstack::world(&client, "own-subnet", 1, 1).await;
    associate(&client, &w.tables[0], &w.subnet).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\nown_subnet_id = \"{}\"\n\
             [probe]\ntargets = [\"198.18.0.10\"]\n\
             [[routes]]\nroute_table_id = \"{}\"\ndestination = \"10.1.0.0/16\"\ntarget_eni = \"{}\"\n",
            w.subnet, w.tables[0], w.enis[0]
        ),
    )
    .unwrap();
    // The test environment has AWS_EC2_METADATA_DISABLED=true: no metadata at all.
    let out = Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .env("RUNTIME_DIRECTORY", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("own subnet {}", w.subnet))
            && stderr.contains("allow_self_subnet"),
        "{stderr}"
    );

    // Allowed explicitly, it starts (and says so loudly); stop it at once.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("own_subnet_id", "allow_self_subnet = true\nown_subnet_id");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("allowed by aws.allow_self_subnet"),
        "{stdout}"
    );
}
