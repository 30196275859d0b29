//! Dry run: reads go to the real backend, writes are printed as the AWS CLI
//! commands that would make them, and never sent.
//!
//! Pretend writes are overlaid on later reads, so the agent sees its plan
//! as done and prints each change once instead of on every tick.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use ipnet::IpNet;

use super::{CloudError, NetworkInterface, RouteApi, TagCall};
use crate::model::Action;
use crate::model::{ManagedRoute, Origin, Route, RouteState, RouteTable, Target, TargetKind};

/// The AWS CLI command equivalent to `action`, as the dry run prints it.
pub fn aws_cli(action: &Action, region: Option<&str>) -> String {
    let route = action.route();
    let eni = Target::NetworkInterface(route.target_eni.clone());
    let (verb, target) = match action {
        Action::Create(_) => ("create-route", Some(&eni)),
        Action::Replace { .. } | Action::Retarget { .. } => ("replace-route", Some(&eni)),
        Action::Restore { original, .. } => ("replace-route", Some(original)),
        Action::Delete(_) => ("delete-route", None),
    };
    let family = match route.destination {
        IpNet::V4(_) => "--destination-cidr-block",
        IpNet::V6(_) => "--destination-ipv6-cidr-block",
    };
    let mut line = format!(
        "aws ec2 {verb} --route-table-id {} {family} {}",
        route.route_table_id, route.destination
    );
    if let Some(target) = target {
        let option = target.kind().map_or("--gateway-id", TargetKind::cli_option);
        line.push_str(&format!(" {option} {target}"));
    }
    if let Some(region) = region {
        line.push_str(&format!(" --region {region}"));
    }
    line
}

/// The AWS CLI command that sets (`Some` value) or deletes (`None`) tags.
pub fn aws_cli_tags(
    resource_id: &str,
    tags: &[(String, Option<String>)],
    region: Option<&str>,
) -> String {
    let deleting = tags.iter().all(|(_, v)| v.is_none());
    let verb = if deleting {
        "delete-tags"
    } else {
        "create-tags"
    };
    tags_line(verb, resource_id, tags, region)
}

/// The AWS CLI command that deletes tags: a key with a value only while
/// the tag still holds it.
pub fn aws_cli_delete_tags(
    resource_id: &str,
    tags: &[(String, Option<String>)],
    region: Option<&str>,
) -> String {
    tags_line("delete-tags", resource_id, tags, region)
}

fn tags_line(
    verb: &str,
    resource_id: &str,
    tags: &[(String, Option<String>)],
    region: Option<&str>,
) -> String {
    let mut line = format!("aws ec2 {verb} --resources {resource_id} --tags");
    for (key, value) in tags {
        let arg = match value {
            Some(value) => format!("Key={key},Value={value}"),
            None => format!("Key={key}"),
        };
        line.push(' ');
        line.push_str(&shell_quote(&arg));
    }
    if let Some(region) = region {
        line.push_str(&format!(" --region {region}"));
    }
    line
}

/// Quotes `arg` for a POSIX shell when it holds anything but plain characters.
fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.,:/=@+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

type Writer = Arc<Mutex<dyn Write + Send>>;

/// The dry-run wrapper around any backend.
pub struct DryRun {
    inner: Arc<dyn RouteApi>,
    region: Option<String>,
    out: Writer,
    /// (table, destination) → the target our pretend static route points
    /// at, or `None` for a pretend delete.
    overlay: Mutex<BTreeMap<(String, IpNet), Option<Target>>>,
    /// (table, tag key) → the pretend value, or `None` for a pretend delete.
    tag_overlay: Mutex<BTreeMap<(String, String), Option<String>>>,
    /// (table, tag key) → the value a pretend conditional delete named:
    /// hidden only while the real tag still holds it (EC2's rule), so a
    /// peer that publishes again is seen again.
    tag_hidden: Mutex<BTreeMap<(String, String), String>>,
    /// (table, tag key) → what the last printed create-tags line said (a
    /// verdict's path; other values whole): a heartbeat that only moves a
    /// verdict's counter and time prints nothing.
    tags_printed: Mutex<BTreeMap<(String, String), String>>,
    printed: Mutex<Vec<String>>,
}

impl DryRun {
    /// Prints to standard output.
    pub fn new(inner: Arc<dyn RouteApi>, region: Option<String>) -> Self {
        Self::with_writer(inner, region, Arc::new(Mutex::new(std::io::stdout())))
    }

    pub fn with_writer(inner: Arc<dyn RouteApi>, region: Option<String>, out: Writer) -> Self {
        Self {
            inner,
            region,
            out,
            overlay: Mutex::new(BTreeMap::new()),
            tag_overlay: Mutex::new(BTreeMap::new()),
            tag_hidden: Mutex::new(BTreeMap::new()),
            tags_printed: Mutex::new(BTreeMap::new()),
            printed: Mutex::new(Vec::new()),
        }
    }

    /// Every line printed so far.
    pub fn printed(&self) -> Vec<String> {
        self.printed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn print(&self, command: &str) {
        let line = format!("DRY-RUN {command}");
        {
            let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
            // A closed stdout must not stop the agent; the line is kept in `printed`.
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
        self.printed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn pretend_tags(&self, resource_id: &str, tags: &[(String, Option<String>)]) {
        if tags.is_empty() {
            return;
        }
        let changed = {
            let mut printed = self
                .tags_printed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut changed = false;
            for (key, value) in tags {
                let gist = value.as_ref().map_or_else(String::new, |v| {
                    crate::peers::parse_tag(key, v)
                        .map_or_else(|| v.clone(), |p| p.path.to_string())
                });
                let slot = (resource_id.to_string(), key.clone());
                changed |= printed.get(&slot) != Some(&gist);
                printed.insert(slot, gist);
            }
            changed
        };
        if changed {
            self.print(&aws_cli_tags(resource_id, tags, self.region.as_deref()));
        }
        let mut hidden = self
            .tag_hidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (key, _) in tags {
            hidden.remove(&(resource_id.to_string(), key.clone()));
        }
        drop(hidden);
        let mut overlay = self
            .tag_overlay
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (key, value) in tags {
            overlay.insert((resource_id.to_string(), key.clone()), value.clone());
        }
    }

    fn pretend(&self, action: &Action) {
        let route = action.route();
        self.print(&aws_cli(action, self.region.as_deref()));
        let value = match action {
            Action::Delete(_) => None,
            Action::Restore { original, .. } => Some(original.clone()),
            _ => Some(Target::NetworkInterface(route.target_eni.clone())),
        };
        self.overlay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((route.route_table_id.clone(), route.destination), value);
    }
}

#[async_trait]
impl RouteApi for DryRun {
    async fn describe_route_tables(&self, ids: &[String]) -> Result<Vec<RouteTable>, CloudError> {
        let mut tables = self.inner.describe_route_tables(ids).await?;
        let tag_overlay = self
            .tag_overlay
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for table in &mut tables {
            for ((id, key), value) in tag_overlay.iter() {
                if *id != table.id {
                    continue;
                }
                match value {
                    Some(value) => table.tags.insert(key.clone(), value.clone()),
                    None => table.tags.remove(key),
                };
            }
        }
        drop(tag_overlay);
        let hidden = self
            .tag_hidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for table in &mut tables {
            for ((id, key), value) in hidden.iter() {
                if *id == table.id && table.tags.get(key) == Some(value) {
                    table.tags.remove(key);
                }
            }
        }
        drop(hidden);
        let overlay = self.overlay.lock().unwrap_or_else(PoisonError::into_inner);
        for table in &mut tables {
            for ((id, destination), target) in overlay.iter() {
                if *id != table.id {
                    continue;
                }
                table
                    .routes
                    .retain(|r| !(r.is_static() && r.destination == *destination));
                if let Some(target) = target {
                    table.routes.push(Route {
                        destination: *destination,
                        target: target.clone(),
                        origin: Origin::CreateRoute,
                        state: RouteState::Active,
                    });
                }
            }
        }
        Ok(tables)
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<NetworkInterface>, CloudError> {
        self.inner.describe_network_interfaces(ids).await
    }

    async fn create_route(&self, route: &ManagedRoute) -> Result<(), CloudError> {
        self.pretend(&Action::Create(route.clone()));
        Ok(())
    }

    async fn replace_route(&self, route: &ManagedRoute) -> Result<(), CloudError> {
        self.pretend(&Action::Replace {
            route: route.clone(),
            replacing: Target::Other("(dry run)".into()),
        });
        Ok(())
    }

    async fn restore_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
        target: &Target,
    ) -> Result<(), CloudError> {
        let route = ManagedRoute::destination_only(route_table_id, destination);
        self.pretend(&Action::Restore {
            route,
            original: target.clone(),
        });
        Ok(())
    }

    async fn delete_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
    ) -> Result<(), CloudError> {
        let route = ManagedRoute::destination_only(route_table_id, destination);
        self.pretend(&Action::Delete(route));
        Ok(())
    }

    async fn subnet_route_table(&self, subnet_id: &str) -> Result<String, CloudError> {
        self.inner.subnet_route_table(subnet_id).await
    }

    async fn is_permitted(&self, action: &Action) -> Result<Option<bool>, CloudError> {
        // EC2's own DryRun: nothing changes, so the real backend may answer.
        self.inner.is_permitted(action).await
    }

    async fn is_permitted_tags(
        &self,
        resource_id: &str,
        call: TagCall,
        key: &str,
    ) -> Result<Option<bool>, CloudError> {
        // EC2's own DryRun: nothing changes, so the real backend may answer.
        self.inner.is_permitted_tags(resource_id, call, key).await
    }

    fn is_dry_run(&self) -> bool {
        true
    }

    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &[(String, String)],
    ) -> Result<(), CloudError> {
        let tags: Vec<(String, Option<String>)> = tags
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        self.pretend_tags(resource_id, &tags);
        Ok(())
    }

    async fn delete_tags(
        &self,
        resource_id: &str,
        tags: &[(String, Option<String>)],
    ) -> Result<(), CloudError> {
        if tags.is_empty() {
            return Ok(());
        }
        // Printed with the value, as `aws ec2 delete-tags` takes it; the
        // overlay drops the key (the value is what the agent just read).
        self.print(&aws_cli_delete_tags(
            resource_id,
            tags,
            self.region.as_deref(),
        ));
        let mut overlay = self
            .tag_overlay
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut hidden = self
            .tag_hidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (key, value) in tags {
            let slot = (resource_id.to_string(), key.clone());
            match value {
                // With a value: gone only while the tag still holds it.
                Some(value) => {
                    if overlay
                        .get(&slot)
                        .is_some_and(|v| v.as_ref() == Some(value))
                    {
                        overlay.insert(slot.clone(), None);
                    }
                    hidden.insert(slot, value.clone());
                }
                None => {
                    overlay.insert(slot, None);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::memory::MemoryRouteApi;
    use crate::model::fixtures::managed;

    #[test]
    fn prints_the_equivalent_cli_command() {
        assert_eq!(
            aws_cli(&Action::Create(managed("10.1.0.0/16")), Some("us-east-1")),
            "aws ec2 create-route --route-table-id rtb-0123456789abcdef0 \
             --destination-cidr-block 10.1.0.0/16 --network-interface-id eni-0123456789abcdef0 \
             --region us-east-1"
        );
        assert_eq!(
            aws_cli(&Action::Delete(managed("fd00:1::/48")), None),
            "aws ec2 delete-route --route-table-id rtb-0123456789abcdef0 \
             --destination-ipv6-cidr-block fd00:1::/48"
        );
    }

    #[tokio::test]
    async fn writes_are_printed_not_made_and_reads_see_them() {
        let r = managed("10.1.0.0/16");
        let inner = Arc::new(MemoryRouteApi::seeded(std::slice::from_ref(&r)));
        let buf: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let dry = DryRun::with_writer(inner.clone(), None, buf.clone());
        dry.create_route(&r).await.unwrap();

        assert!(
            inner.mutating_calls().is_empty(),
            "dry run made a real call"
        );
        let ids = [r.route_table_id.clone()];
        let seen = dry.describe_route_tables(&ids).await.unwrap();
        let none = crate::state::Record::default();
        assert_eq!(
            crate::plan::status(&r, &none, &seen),
            crate::plan::Status::Ours {
                state: RouteState::Active,
                eni: r.target_eni.clone(),
                stale: false,
            }
        );
        let real = inner.describe_route_tables(&ids).await.unwrap();
        assert_eq!(
            crate::plan::status(&r, &none, &real),
            crate::plan::Status::Absent
        );

        dry.delete_route(&r.route_table_id, r.destination)
            .await
            .unwrap();
        let seen = dry.describe_route_tables(&ids).await.unwrap();
        assert_eq!(
            crate::plan::status(&r, &none, &seen),
            crate::plan::Status::Absent
        );

        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("DRY-RUN aws ec2 create-route "));
        assert_eq!(dry.printed().len(), 2);
        assert!(inner.mutating_calls().is_empty());
    }

    #[tokio::test]
    async fn tag_writes_are_printed_not_made_and_reads_see_them() {
        let r = managed("10.1.0.0/16");
        let inner = Arc::new(MemoryRouteApi::seeded(std::slice::from_ref(&r)));
        let t = r.route_table_id.as_str();
        inner
            .create_tags(
                t,
                &[("keep".into(), "1".into()), ("gone".into(), "2".into())],
            )
            .await
            .unwrap();
        let before = inner.mutating_calls().len();
        let dry = DryRun::with_writer(inner.clone(), None, Arc::new(Mutex::new(Vec::new())));
        dry.create_tags(
            t,
            &[("route-failover:verdict:i-1".into(), "Backup 3 down".into())],
        )
        .await
        .unwrap();
        dry.delete_tags(t, &[("gone".to_string(), None)])
            .await
            .unwrap();
        assert_eq!(
            inner.mutating_calls().len(),
            before,
            "dry run made a real call"
        );
        assert_eq!(
            dry.printed(),
            [
                format!(
                    "DRY-RUN aws ec2 create-tags --resources {t} \
                     --tags 'Key=route-failover:verdict:i-1,Value=Backup 3 down'"
                ),
                format!("DRY-RUN aws ec2 delete-tags --resources {t} --tags Key=gone"),
            ]
        );
        let seen = dry
            .describe_route_tables(&[t.to_string(), "rtb-0fffffffffffffff0".to_string()])
            .await
            .unwrap();
        assert_eq!(seen.len(), 1, "a missing table passes through as absent");
        let keys: Vec<&str> = seen[0].tags.keys().map(String::as_str).collect();
        assert_eq!(keys, ["keep", "route-failover:verdict:i-1"]);
        let real = inner.tables();
        assert_eq!(real[0].tags.len(), 2);
        assert!(real[0].tags.contains_key("gone"));
    }

    #[tokio::test]
    async fn a_conditional_tag_delete_hides_only_that_value_and_beats_print_on_change() {
        let r = managed("10.1.0.0/16");
        let inner = Arc::new(MemoryRouteApi::seeded(std::slice::from_ref(&r)));
        let t = r.route_table_id.as_str();
        let key = "route-failover:verdict:i-old".to_string();
        let put = |v: &str| [(key.clone(), v.to_string())];
        inner.create_tags(t, &put("backup;1;10;old")).await.unwrap();
        let dry = DryRun::with_writer(inner.clone(), None, Arc::new(Mutex::new(Vec::new())));
        dry.delete_tags(t, &[(key.clone(), Some("backup;1;10;old".into()))])
            .await
            .unwrap();
        let shown = || async {
            dry.describe_route_tables(&[t.to_string()]).await.unwrap()[0]
                .tags
                .get("route-failover:verdict:i-old")
                .cloned()
        };
        assert_eq!(shown().await, None);
        // The peer publishes again: seen again, as EC2 would keep it.
        inner
            .create_tags(t, &put("primary;2;99;back"))
            .await
            .unwrap();
        assert_eq!(shown().await.as_deref(), Some("primary;2;99;back"));
        // Our beats: one line per change of verdict, not per beat.
        let ours = "route-failover:verdict:i-1".to_string();
        for (n, path) in [(1, "primary"), (2, "primary"), (3, "backup"), (4, "backup")] {
            dry.create_tags(t, &[(ours.clone(), format!("{path};{n};{n};r"))])
                .await
                .unwrap();
        }
        let creates = dry
            .printed()
            .iter()
            .filter(|l| l.contains("create-tags"))
            .count();
        assert_eq!(creates, 2, "{:?}", dry.printed());
    }

    #[test]
    fn tag_values_are_quoted_for_the_shell() {
        let line = aws_cli_tags(
            "rtb-1",
            &[("k".into(), Some("it's".into()))],
            Some("us-east-1"),
        );
        assert_eq!(
            line,
            "aws ec2 create-tags --resources rtb-1 --tags 'Key=k,Value=it'\\''s' --region us-east-1"
        );
    }
}
