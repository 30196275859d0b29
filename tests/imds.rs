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

type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

/// A metadata service that insists on IMDSv2 session tokens, as the agent's
/// instance would with `HttpTokens=required`. Records (method, path, token?).
async fn fake_imds(subnet: String, v2: bool) -> (String, Seen) {
    faulty_imds(subnet, v2, |_| None).await
}

/// As [`fake_imds`], except that `fault` answers first when it has something to say.
async fn faulty_imds(
    subnet: String,
    v2: bool,
    fault: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static,
) -> (String, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let url = http::serve(move |r: Request| {
        let has_token = r.header("x-aws-ec2-metadata-token") == Some(TOKEN);
        log.lock()
            .unwrap()
            .push((r.method.clone(), r.path.clone(), has_token));
        if let Some(answer) = fault(&r) {
            return answer;
        }
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
        .env("STATE_DIRECTORY", dir.path())
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

    // Probing starts at once, but the guard runs before the tables are
    // read: it refuses, nothing is adopted or changed, and the exit status
    // (78) tells systemd not to restart into the same refusal.
    let out = route_failover(&["run", "--config", cfg], &imds, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("allow_self_subnet"), "{stderr}");
    assert!(stderr.contains("refusing to manage the routes"), "{stderr}");
    assert!(
        !stderr.contains("adopted") && !stderr.contains("route changed"),
        "it touched the tables anyway: {stderr}"
    );

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
    // Without IMDSv2 the agent learns nothing; a service that refuses the
    // token is on EC2 but broken, so the guard cannot run: a failed check.
    assert!(
        stdout.contains("✗ instance metadata answered but failed") && stdout.contains("HTTP 403"),
        "{stdout}"
    );
    assert!(!out.status.success(), "{stdout}");
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
        .env("STATE_DIRECTORY", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
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

// Below: no LocalStack. The EC2 endpoint is a fake on loopback that refuses
// every call at once, so each test sees only what happens around metadata.

const TABLE: &str = "rtb-0123456789abcdef0";
const OWN_SUBNET: &str = "subnet-0123456789abcdef0";

/// An EC2 endpoint that answers every call with a non-retryable error.
async fn refusing_ec2() -> String {
    http::serve(|_| Response::Reply {
        status: 400,
        content_type: "text/xml;charset=UTF-8",
        headers: vec![],
        body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
               <Code>InvalidParameterValue</Code><Message>fake EC2 refuses</Message></Error>\
               </Errors><RequestID>fake</RequestID></Response>"
            .to_string(),
    })
    .await
}

/// A config with its region set (metadata may not tell it) and, optionally,
/// `aws.own_subnet_id`.
async fn offline_config(
    dir: &tempfile::TempDir,
    imds: &str,
    own_subnet: bool,
) -> std::path::PathBuf {
    let ec2 = refusing_ec2().await;
    let path = dir.path().join("config.toml");
    let own = if own_subnet {
        format!("own_subnet_id = \"{OWN_SUBNET}\"\n")
    } else {
        String::new()
    };
    std::fs::write(
        &path,
        format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{ec2}\"\nimds_endpoint = \"{imds}\"\n{own}\
             [probe]\ntargets = [\"198.18.0.10\"]\n\
             [[routes]]\nroute_table_id = \"{TABLE}\"\ndestination = \"10.1.0.0/16\"\n\
             target_eni = \"eni-0123456789abcdef0\"\n"
        ),
    )
    .unwrap();
    path
}

/// Runs the binary with dummy credentials and the metadata service enabled,
/// but only the given (loopback) one.
/// Under coreutils' `timeout`, so that an agent that wrongly starts
/// (skipping the guard) ends the test with status 124 instead of hanging it.
fn offline(args: &[&str], config: &std::path::Path, imds: &str, dir: &tempfile::TempDir) -> Output {
    Command::new("timeout")
        .args(["30", BIN])
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env_remove("AWS_REGION")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("RUNTIME_DIRECTORY", dir.path())
        .output()
        .unwrap()
}

fn both(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A metadata service that answered but failed: `run` refuses to start,
/// naming the cause and the bypass; `check` prints ✗ for it; with
/// `aws.own_subnet_id` set, the guard runs on that subnet instead.
async fn assert_refused(case: &str, imds: &str, cause: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = offline_config(&dir, imds, false).await;

    let out = offline(&["run"], &cfg, imds, &dir);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{case}: {text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the instance metadata service answered but failed")
            && stderr.contains(cause)
            && stderr.contains("set aws.own_subnet_id"),
        "{case}: {text}"
    );
    assert!(
        !stderr.contains("self-subnet guard skipped"),
        "{case}: {text}"
    );

    let out = offline(&["check"], &cfg, imds, &dir);
    let text = both(&out);
    assert!(!out.status.success(), "{case}: {text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("✗ instance metadata answered but failed") && stdout.contains(cause),
        "{case}: {text}"
    );
    assert!(
        stdout.contains("fix: ") && stdout.contains("aws.own_subnet_id"),
        "{case}: {text}"
    );
    assert!(!stdout.contains("! own subnet unknown"), "{case}: {text}");

    // The bypass: the configured subnet drives the guard (which then asks
    // the fake EC2, which refuses: a different ✗, about that subnet).
    let cfg = offline_config(&dir, imds, true).await;
    let out = offline(&["check"], &cfg, imds, &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("instance metadata answered"),
        "{case}: {}",
        both(&out)
    );
    assert!(
        stdout.contains(&format!(
            "✗ cannot find the route table of this instance's subnet {OWN_SUBNET}"
        )),
        "{case}: {}",
        both(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_failing_token_request_is_not_off_ec2() {
    for status in [401, 403, 500] {
        let (imds, _) = faulty_imds(OWN_SUBNET.into(), true, move |r| {
            (r.method == "PUT").then(|| text(status, "no"))
        })
        .await;
        assert_refused(&format!("token {status}"), &imds, &format!("HTTP {status}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_after_the_mac_was_read_is_not_off_ec2() {
    let subnet_path = format!("/latest/meta-data/network/interfaces/macs/{MAC}/subnet-id");
    for status in [404, 500] {
        let path = subnet_path.clone();
        let (imds, seen) = faulty_imds(OWN_SUBNET.into(), true, move |r| {
            (r.path == path).then(|| text(status, "no"))
        })
        .await;
        assert_refused(
            &format!("subnet-id {status}"),
            &imds,
            &format!("reading the subnet of interface {MAC}: HTTP {status}"),
        )
        .await;
        // It did read the MAC first: the service was there.
        assert!(seen
            .lock()
            .unwrap()
            .iter()
            .any(|(_, p, _)| p == "/latest/meta-data/mac"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_are_not_off_ec2() {
    let (imds, _) = faulty_imds("<html>captive portal</html>".into(), true, |_| None).await;
    assert_refused("garbage subnet id", &imds, "is not a subnet id").await;
    let (imds, _) = faulty_imds(OWN_SUBNET.into(), true, |r| {
        (r.path == "/latest/meta-data/mac").then(|| text(200, "not a mac"))
    })
    .await;
    assert_refused("garbage MAC", &imds, "is not a MAC address").await;
}

/// Off EC2 the guard is skipped with a warning, as before: `check` says so
/// with `!`, not `✗`.
async fn assert_off_ec2(case: &str, imds: &str, env_disabled: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = offline_config(&dir, imds, false).await;
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config"])
        .arg(&cfg)
        .env_remove("AWS_REGION")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    if env_disabled {
        cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    } else {
        cmd.env_remove("AWS_EC2_METADATA_DISABLED");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("! own subnet unknown"),
        "{case}: {}",
        both(&out)
    );
    assert!(
        !stdout.contains("instance metadata answered"),
        "{case}: {}",
        both(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_answering_or_metadata_disabled_is_off_ec2() {
    // Connection refused: a loopback port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    assert_off_ec2("connection refused", &closed, false).await;
    // Accepted, never answered: the token request times out.
    let (hanging, _) = faulty_imds(OWN_SUBNET.into(), true, |_| Some(Response::Hang)).await;
    assert_off_ec2("token timeout", &hanging, false).await;
    // Disabled by the environment: not asked at all, even though it would answer.
    let (working, seen) = fake_imds(OWN_SUBNET.into(), true).await;
    assert_off_ec2("AWS_EC2_METADATA_DISABLED", &working, true).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "metadata was asked while disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_service_names_the_subnet_for_the_guard() {
    // The guard then asks EC2 (here a fake that refuses) about that subnet.
    let (imds, _) = fake_imds("subnet-0aaaaaaaaaaaaaaa0".into(), true).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = offline_config(&dir, &imds, false).await;
    let out = offline(&["check"], &cfg, &imds, &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "✗ cannot find the route table of this instance's subnet subnet-0aaaaaaaaaaaaaaa0"
        ),
        "{}",
        both(&out)
    );
}
