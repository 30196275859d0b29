//! The shipped IAM policy grants exactly what the agent calls, and the
//! calls that change routes only on route tables.

use std::collections::BTreeSet;

use serde_json::Value;

const POLICY: &str = include_str!("../iam-policy.example.json");

fn as_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn least_privilege() {
    let policy: Value = serde_json::from_str(POLICY).expect("valid JSON");
    let mut granted = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        let actions = as_list(&statement["Action"]);
        let resources = as_list(&statement["Resource"]);
        for action in &actions {
            let mutating = !action.starts_with("ec2:Describe");
            if mutating {
                assert!(
                    resources
                        .iter()
                        .all(|r| r.starts_with("arn:aws:ec2:") && r.contains(":route-table/rtb-")),
                    "{action} is granted beyond route tables: {resources:?}"
                );
            }
            granted.insert(action.clone());
        }
    }
    let used: BTreeSet<String> = [
        "ec2:DescribeRouteTables",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "ec2:CreateRoute",
        "ec2:ReplaceRoute",
        "ec2:DeleteRoute",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(granted, used);
}
