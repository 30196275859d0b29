//! The shipped IAM policy grants exactly what the agent calls, the calls
//! that change anything only on route tables, and the tag calls only for
//! the agent's own `route-failover:` keys.

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
            if action.ends_with("Tags") {
                assert_only_our_tag_keys(action, statement);
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
        "ec2:CreateTags",
        "ec2:DeleteTags",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(granted, used);
}

/// Every tag key in the request must be ours, and there must be keys: a
/// DeleteTags that names none deletes every tag on the table, and
/// `ForAllValues` alone is true for an empty set.
fn assert_only_our_tag_keys(action: &str, statement: &Value) {
    let condition = &statement["Condition"];
    let keys = as_list(&condition["ForAllValues:StringLike"]["aws:TagKeys"]);
    // Only verdict keys: the agent writes and deletes nothing else, and a
    // wider route-failover:* would let it touch other tools' keys.
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == "route-failover:verdict:*"),
        "{action} may touch tag keys other than route-failover:verdict:*: {keys:?}"
    );
    assert_eq!(
        condition["Null"]["aws:TagKeys"], "false",
        "{action} must require tag keys (an empty DeleteTags deletes every tag)"
    );
}

#[test]
fn the_tag_condition_is_checked() {
    let loose = serde_json::json!({
        "Condition": {"ForAllValues:StringLike": {"aws:TagKeys": ["*"]}}
    });
    let refused = std::panic::catch_unwind(|| assert_only_our_tag_keys("ec2:CreateTags", &loose));
    assert!(refused.is_err());
    let wide = serde_json::json!({
        "Condition": {
            "ForAllValues:StringLike": {"aws:TagKeys": ["route-failover:*"]},
            "Null": {"aws:TagKeys": "false"}
        }
    });
    let refused = std::panic::catch_unwind(|| assert_only_our_tag_keys("ec2:DeleteTags", &wide));
    assert!(refused.is_err());
    let no_keys = serde_json::json!({
        "Condition": {"ForAllValues:StringLike": {"aws:TagKeys": ["route-failover:verdict:*"]}}
    });
    let refused = std::panic::catch_unwind(|| assert_only_our_tag_keys("ec2:DeleteTags", &no_keys));
    assert!(
        refused.is_err(),
        "without Null, a DeleteTags naming no key passes"
    );
}
