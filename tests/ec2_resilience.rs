//! The EC2 adapter's resilience against a scripted fake EC2 endpoint on
//! loopback: bounded timeouts, retries of throttling and 5xx with backoff,
//! no retry of what cannot pass, and DryRun permission checks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use route_failover::cloud::ec2::Ec2RouteApi;
use route_failover::cloud::{ErrorKind, RouteApi};
use route_failover::config::Config;
use route_failover::model::Action;
use route_failover::model::ManagedRoute;

#[path = "common/http.rs"]
mod http;

/// What the fake answers to one request.
#[derive(Clone)]
enum Reply {
    Error(u16, &'static str),
    Ok(&'static str),
    /// Accept the request and never answer.
    Hang,
}

/// A fake EC2 endpoint: answers requests in script order (the last reply
/// repeats) and records every request body.
struct FakeEc2 {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl FakeEc2 {
    async fn start(script: Vec<Reply>) -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&bodies);
        let url = http::serve(move |request| {
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push(request.body);
                seen.len()
            };
            let xml = |status, body| http::Response::Reply {
                status,
                content_type: "text/xml;charset=UTF-8",
                headers: vec![],
                body,
            };
            match script.get(n - 1).or(script.last()).cloned().unwrap() {
                Reply::Hang => http::Response::Hang,
                Reply::Ok(body) => xml(200, body.to_string()),
                Reply::Error(status, code) => xml(
                    status,
                    format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                         <Code>{code}</Code><Message>fake {code}</Message></Error></Errors>\
                         <RequestID>fake-{n}</RequestID></Response>"
                    ),
                ),
            }
        })
        .await;
        Self { url, bodies }
    }

    fn requests(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    async fn api(&self, api_timeout: &str) -> Ec2RouteApi {
        let text = format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\napi_timeout = \"{api_timeout}\"\n\
             [probe]\ntargets = [\"198.18.0.1\"]\n\
             [[routes]]\nroute_table_id = \"rtb-0123456789abcdef0\"\ndestination = \"10.1.0.0/16\"\n\
             target_eni = \"eni-0123456789abcdef0\"\n",
            self.url
        );
        let config = Config::parse(&text, std::path::Path::new("fake.toml")).unwrap();
        let credentials = aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "fake");
        Ec2RouteApi::connect_with(&config.aws, &Default::default(), Some(credentials))
            .await
            .unwrap()
    }
}

const CREATED: &str = "<CreateRouteResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
    <requestId>ok</requestId><return>true</return></CreateRouteResponse>";

const DESCRIBED: &str =
    "<DescribeRouteTablesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
    <requestId>ok</requestId><routeTableSet/></DescribeRouteTablesResponse>";

fn route() -> ManagedRoute {
    ManagedRoute {
        route_table_id: "rtb-0123456789abcdef0".into(),
        destination: "10.1.0.0/16".parse().unwrap(),
        target_eni: "eni-0123456789abcdef0".into(),
    }
}

#[tokio::test]
async fn throttling_is_retried_until_it_passes() {
    let fake = FakeEc2::start(vec![
        Reply::Error(503, "RequestLimitExceeded"),
        Reply::Error(503, "RequestLimitExceeded"),
        Reply::Ok(CREATED),
    ])
    .await;
    fake.api("2s")
        .await
        .create_route(&route())
        .await
        .expect("third attempt succeeds");
    assert_eq!(fake.requests(), 3);
    assert!(fake.bodies.lock().unwrap()[0].contains("Action=CreateRoute"));
}

#[tokio::test]
async fn server_errors_are_retried() {
    let fake = FakeEc2::start(vec![Reply::Error(500, "InternalError"), Reply::Ok(CREATED)]).await;
    fake.api("2s")
        .await
        .create_route(&route())
        .await
        .expect("second attempt succeeds");
    assert_eq!(fake.requests(), 2);
}

#[tokio::test]
async fn persistent_throttling_gives_up_after_four_attempts() {
    let fake = FakeEc2::start(vec![Reply::Error(503, "RequestLimitExceeded")]).await;
    let e = fake
        .api("2s")
        .await
        .create_route(&route())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
    assert_eq!(fake.requests(), 4);
}

#[tokio::test]
async fn what_cannot_pass_is_not_retried() {
    for (status, code, kind) in [
        (403, "UnauthorizedOperation", ErrorKind::Auth),
        (
            400,
            "InvalidRouteTableID.NotFound",
            ErrorKind::TableNotFound,
        ),
        (400, "RouteAlreadyExists", ErrorKind::RouteAlreadyExists),
    ] {
        let fake = FakeEc2::start(vec![Reply::Error(status, code)]).await;
        let e = fake
            .api("2s")
            .await
            .create_route(&route())
            .await
            .unwrap_err();
        assert_eq!(e.kind, kind, "{code}: {e}");
        assert_eq!(e.code.as_deref(), Some(code));
        assert_eq!(fake.requests(), 1, "{code} was retried");
    }
}

#[tokio::test]
async fn a_hung_endpoint_fails_within_the_bound() {
    let fake = FakeEc2::start(vec![Reply::Hang]).await;
    let api = fake.api("300ms").await;
    let started = Instant::now();
    let e = api.create_route(&route()).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    // Four attempts of 300 ms plus capped backoff between them.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(took >= Duration::from_millis(300), "gave up after {took:?}");
    assert!(fake.requests() >= 2, "a timed-out attempt was not retried");
}

#[tokio::test]
async fn permissions_are_checked_with_dry_run() {
    let fake = FakeEc2::start(vec![Reply::Error(412, "DryRunOperation")]).await;
    let api = fake.api("2s").await;
    assert_eq!(
        api.is_permitted(&Action::Create(route())).await.unwrap(),
        Some(true)
    );
    assert_eq!(
        api.is_permitted(&Action::Delete(route())).await.unwrap(),
        Some(true)
    );
    let bodies = fake.bodies.lock().unwrap().clone();
    assert!(
        bodies.iter().all(|b| b.contains("DryRun=true")),
        "{bodies:?}"
    );
    // One harmless describe first (asked once), then the two operations.
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert!(
        bodies[0].contains("Action=DescribeRouteTables"),
        "{bodies:?}"
    );

    let fake = FakeEc2::start(vec![
        Reply::Error(412, "DryRunOperation"),
        Reply::Error(403, "UnauthorizedOperation"),
    ])
    .await;
    let api = fake.api("2s").await;
    assert_eq!(
        api.is_permitted(&Action::Delete(route())).await.unwrap(),
        Some(false)
    );

    // An endpoint that ignores DryRun (it answers the describe normally) is
    // never sent the mutating call: that call would really change the table.
    let fake = FakeEc2::start(vec![Reply::Ok(DESCRIBED)]).await;
    let api = fake.api("2s").await;
    assert_eq!(
        api.is_permitted(&Action::Create(route())).await.unwrap(),
        None
    );
    assert_eq!(fake.requests(), 1);
}

/// One page of DescribeRouteTables holding `table`, pointing at `next`.
fn page(table: &str, next: Option<&str>) -> &'static str {
    let token = next
        .map(|t| format!("<nextToken>{t}</nextToken>"))
        .unwrap_or_default();
    Box::leak(
        format!(
            "<DescribeRouteTablesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>ok</requestId><routeTableSet><item><routeTableId>{table}</routeTableId>\
             <routeSet/><associationSet/><tagSet/></item></routeTableSet>{token}\
             </DescribeRouteTablesResponse>"
        )
        .into_boxed_str(),
    )
}

/// Tables are read with the `route-table-id` filter (an unknown id is left
/// out instead of failing the call), at most 200 values per call as EC2
/// allows, following every page.
#[tokio::test]
async fn tables_are_read_by_filter_in_chunks_and_pages() {
    let fake = FakeEc2::start(vec![
        Reply::Ok(page("rtb-a", Some("page-2"))),
        Reply::Ok(page("rtb-b", None)),
        Reply::Ok(DESCRIBED),
    ])
    .await;
    let api = fake.api("2s").await;
    assert!(api.describe_route_tables(&[]).await.unwrap().is_empty());
    assert_eq!(fake.requests(), 0, "no ids must not read every table");

    let mut ids: Vec<String> = (0..450).map(|i| format!("rtb-{i:017x}")).collect();
    ids.push(ids[0].clone());
    let tables = api.describe_route_tables(&ids).await.unwrap();
    let got: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(got, ["rtb-a", "rtb-b"], "both pages are read");

    let bodies = fake.bodies.lock().unwrap().clone();
    // Chunk one (two pages), chunk two, chunk three.
    assert_eq!(bodies.len(), 4, "{bodies:?}");
    assert!(bodies[1].contains("NextToken=page-2"), "{}", bodies[1]);
    let mut asked = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        assert!(body.contains("Action=DescribeRouteTables"), "{body}");
        assert!(body.contains("Filter.1.Name=route-table-id"), "{body}");
        assert!(!body.contains("RouteTableId."), "explicit ids in {body}");
        let values: Vec<String> = body
            .split('&')
            .filter_map(|kv| kv.strip_prefix("Filter.1.Value."))
            .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_string()))
            .collect();
        assert!(values.len() <= 200, "request {i}: {} values", values.len());
        if i != 1 {
            asked.extend(values);
        }
    }
    asked.sort();
    ids.sort();
    ids.dedup();
    assert_eq!(asked, ids, "every id asked once");
}
