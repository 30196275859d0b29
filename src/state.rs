//! The ownership ledger: a durable record of the routes the agent created,
//! and of the foreign routes it replaced (with `takeover`), so that they are
//! recognised as ours after the config changes (a new `target_eni`, a route
//! dropped from `[[routes]]`) or the agent restarts.
//!
//! Each entry is written (and synced) *before* the call that makes it true,
//! so a crash between the two leaves an entry for a route that may not
//! exist, never a route of ours that the ledger does not know. Entries that
//! the route tables no longer bear out are pruned after each read.
//!
//! The file lives in systemd's `StateDirectory` (`$STATE_DIRECTORY`), else
//! in `/var/lib/route-failover`, one file per configuration path.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::decide::Operator;
use crate::model::{Action, ManagedRoute, RouteTable, Target};

/// The ledger's on-disk format version.
const VERSION: u32 = 1;

/// Where state lives when systemd does not say.
const DEFAULT_DIR: &str = "/var/lib/route-failover";

/// A route slot: one destination in one table.
pub type Slot = (String, IpNet);

/// What the ledger holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    version: u32,
    /// Static routes we created: (table, destination) -> every ENI we have
    /// pointed them at. A retarget adds the new ENI before its call and
    /// keeps the old one, so a failed or not yet visible ReplaceRoute never
    /// leaves our route looking foreign.
    created: BTreeMap<String, BTreeMap<IpNet, BTreeSet<String>>>,
    /// Foreign routes we replaced: (table, destination) -> their original target.
    replaced: BTreeMap<String, BTreeMap<IpNet, Target>>,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            version: VERSION,
            created: BTreeMap::new(),
            replaced: BTreeMap::new(),
        }
    }
}

impl Record {
    /// Whether we pointed the route at `slot` to `eni` at some point.
    pub fn created_with(&self, table: &str, destination: IpNet, eni: &str) -> bool {
        self.created
            .get(table)
            .and_then(|m| m.get(&destination))
            .is_some_and(|enis| enis.contains(eni))
    }

    /// An ENI we created the route at `slot` with (the first, sorted), if any.
    pub fn created_eni(&self, table: &str, destination: IpNet) -> Option<&str> {
        self.created
            .get(table)
            .and_then(|m| m.get(&destination))
            .and_then(|enis| enis.iter().next())
            .map(String::as_str)
    }

    /// The original target of the foreign route we replaced at `slot`.
    pub fn replaced_target(&self, table: &str, destination: IpNet) -> Option<&Target> {
        self.replaced.get(table).and_then(|m| m.get(&destination))
    }

    /// Every slot the ledger knows, sorted.
    pub fn slots(&self) -> BTreeSet<Slot> {
        let created = self
            .created
            .iter()
            .flat_map(|(t, m)| m.keys().map(move |d| (t.clone(), *d)));
        let replaced = self
            .replaced
            .iter()
            .flat_map(|(t, m)| m.keys().map(move |d| (t.clone(), *d)));
        created.chain(replaced).collect()
    }

    /// The tables the ledger has entries in.
    pub fn table_ids(&self) -> BTreeSet<String> {
        self.slots().into_iter().map(|(t, _)| t).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.replaced.is_empty()
    }

    fn insert_created(&mut self, route: &ManagedRoute) {
        self.created
            .entry(route.route_table_id.clone())
            .or_default()
            .entry(route.destination)
            .or_default()
            .insert(route.target_eni.clone());
    }

    fn insert_replaced(&mut self, route: &ManagedRoute, original: &Target) {
        self.replaced
            .entry(route.route_table_id.clone())
            .or_default()
            .insert(route.destination, original.clone());
    }

    fn remove(&mut self, table: &str, destination: IpNet) {
        remove_slot(&mut self.created, table, destination);
        remove_slot(&mut self.replaced, table, destination);
    }

    /// The entries the observed tables no longer bear out: the slot holds no
    /// static route to an ENI we put there, or its table is gone and no
    /// longer configured (`configured_tables`). A configured table that is
    /// missing keeps its entries: it is reported, not forgotten.
    pub fn stale(
        &self,
        observed: &[RouteTable],
        configured_tables: &BTreeSet<String>,
        current_eni: impl Fn(&str, IpNet) -> Option<String>,
    ) -> Vec<Slot> {
        let mut stale = Vec::new();
        for (table_id, destination) in self.slots() {
            let Some(table) = observed.iter().find(|t| t.id == table_id) else {
                if !configured_tables.contains(&table_id) {
                    stale.push((table_id, destination));
                }
                continue;
            };
            let ours = table
                .routes
                .iter()
                .find(|r| r.is_static() && r.destination == destination)
                .is_some_and(|r| match &r.target {
                    Target::NetworkInterface(eni) => {
                        self.created_with(&table_id, destination, eni)
                            || current_eni(&table_id, destination).as_deref() == Some(eni.as_str())
                    }
                    _ => false,
                });
            if !ours {
                stale.push((table_id, destination));
            }
        }
        stale
    }
}

fn remove_slot<V>(map: &mut BTreeMap<String, BTreeMap<IpNet, V>>, table: &str, destination: IpNet) {
    if let Some(m) = map.get_mut(table) {
        m.remove(&destination);
        if m.is_empty() {
            map.remove(table);
        }
    }
}

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the ownership ledger {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the ownership ledger {path} is corrupt ({error}); move it aside to start afresh \
         (routes of ours that point at a target_eni no longer in the config would then count as foreign)"
    )]
    Corrupt {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error(
        "the ownership ledger {path} has format version {version}, newer than this \
         route-failover understands ({VERSION}): run the newer version, or move the file aside"
    )]
    Newer { path: PathBuf, version: u32 },
    #[error("cannot write the ownership ledger {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The ledger and where it is kept (nowhere, for the demo and tests).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    path: Option<PathBuf>,
    record: Record,
}

impl Ledger {
    /// A ledger that lives only in memory.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The ledger for `config` in the state directory: systemd's
    /// `$STATE_DIRECTORY`, else /var/lib/route-failover.
    pub fn for_config(config: &Path) -> Result<Self, StateError> {
        Self::open(&state_dir().join(file_name(config)))
    }

    /// Reads the ledger for `config` without writing anything (for `status`
    /// and `plan`); nothing recorded yet is an empty record.
    pub fn peek_for_config(config: &Path) -> Result<Record, StateError> {
        read(&state_dir().join(file_name(config)))
    }

    /// Opens (or starts) the ledger kept at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let record = read(path)?;
        let ledger = Self {
            path: Some(path.to_path_buf()),
            record,
        };
        // Prove now, not at the first failover, that it can be written.
        ledger.save()?;
        Ok(ledger)
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Records that we are about to create (or retarget) `route`.
    pub fn will_create(&mut self, route: &ManagedRoute) -> Result<(), StateError> {
        self.will_apply(&[Action::Create(route.clone())])
    }

    /// Records that we are about to replace a foreign route whose target is `original`.
    pub fn will_replace(
        &mut self,
        route: &ManagedRoute,
        original: &Target,
    ) -> Result<(), StateError> {
        self.will_apply(&[Action::Replace {
            route: route.clone(),
            replacing: original.clone(),
        }])
    }

    /// Records, in one write, every route the actions are about to make
    /// ours (creates, retargets, takeovers); removals need no record first.
    pub fn will_apply(&mut self, actions: &[Action]) -> Result<(), StateError> {
        self.update(|r| {
            for action in actions {
                match action {
                    Action::Create(route) | Action::Retarget { route, .. } => {
                        r.insert_created(route);
                    }
                    Action::Replace { route, replacing } => {
                        r.insert_replaced(route, replacing);
                        r.insert_created(route);
                    }
                    Action::Delete(_) | Action::Restore { .. } => {}
                }
            }
        })
    }

    /// Forgets the slot: our route there is gone (deleted, or restored to its owner).
    pub fn forget(&mut self, table: &str, destination: IpNet) -> Result<(), StateError> {
        self.forget_all(&[(table.to_string(), destination)])
    }

    /// Forgets several slots at once.
    pub fn forget_all(&mut self, slots: &[Slot]) -> Result<(), StateError> {
        if slots.is_empty() {
            return Ok(());
        }
        self.update(|r| {
            for (t, d) in slots {
                r.remove(t, *d);
            }
        })
    }

    fn update(&mut self, f: impl FnOnce(&mut Record)) -> Result<(), StateError> {
        let before = self.record.clone();
        f(&mut self.record);
        if self.record == before {
            return Ok(());
        }
        if let Err(e) = self.save() {
            // What is on disk is what counts: do not pretend otherwise.
            self.record = before;
            return Err(e);
        }
        Ok(())
    }

    /// Writes the ledger atomically: a synced temporary file renamed over the old one.
    fn save(&self) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&self.record).expect("the ledger serializes");
        write_atomically(path, &bytes).map_err(|error| StateError::Write {
            path: path.clone(),
            error,
        })
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never half of either: a synced temporary file renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// An operator's hold and pause, kept across restarts (`ctl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub operator: Operator,
    pub paused: bool,
}

/// Where the operator's hold and pause are kept: beside the ledger, as
/// `operator-<config path>.json`; nowhere for the demo and tests.
#[derive(Debug, Clone, Default)]
pub struct OperatorStore {
    path: Option<PathBuf>,
}

impl OperatorStore {
    pub fn in_memory() -> Self {
        Self::default()
    }

    pub fn for_config(config: &Path) -> Self {
        Self::at(&state_dir().join(format!(
            "operator-{}",
            &file_name(config)["routes-".len()..]
        )))
    }

    pub fn at(path: &Path) -> Self {
        Self {
            path: Some(path.to_path_buf()),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What was recorded; nothing recorded is automatic and not paused.
    pub fn load(&self) -> Result<OperatorRecord, StateError> {
        let Some(path) = &self.path else {
            return Ok(OperatorRecord::default());
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| StateError::Corrupt {
                path: path.clone(),
                error,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OperatorRecord::default()),
            Err(error) => Err(StateError::Read {
                path: path.clone(),
                error,
            }),
        }
    }

    pub fn save(&self, record: OperatorRecord) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&record).expect("the record serializes");
        write_atomically(path, &bytes).map_err(|error| StateError::Write {
            path: path.clone(),
            error,
        })
    }
}

fn read(path: &Path) -> Result<Record, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let record: Record =
                serde_json::from_slice(&bytes).map_err(|error| StateError::Corrupt {
                    path: path.to_path_buf(),
                    error,
                })?;
            if record.version > VERSION {
                return Err(StateError::Newer {
                    path: path.to_path_buf(),
                    version: record.version,
                });
            }
            Ok(record)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(error) => Err(StateError::Read {
            path: path.to_path_buf(),
            error,
        }),
    }
}

fn state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(|dirs| {
            // systemd may list several, separated by colons; the first is ours.
            let dirs = dirs.to_string_lossy().to_string();
            PathBuf::from(dirs.split(':').next().unwrap_or_default())
        })
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// `routes-<config path, escaped>.json`: one ledger per configuration.
fn file_name(config: &Path) -> String {
    let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let name: String = absolute
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("routes-{name}.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, Route, RouteState};

    fn route(table: &str, dest: &str, eni: &str) -> ManagedRoute {
        ManagedRoute {
            route_table_id: table.into(),
            destination: dest.parse().unwrap(),
            target_eni: eni.into(),
        }
    }

    fn table(id: &str, routes: &[(&str, Target)]) -> RouteTable {
        RouteTable {
            id: id.into(),
            routes: routes
                .iter()
                .map(|(d, t)| Route {
                    destination: d.parse().unwrap(),
                    target: t.clone(),
                    origin: Origin::CreateRoute,
                    state: RouteState::Active,
                })
                .collect(),
            ..RouteTable::default()
        }
    }

    #[test]
    fn survives_a_reopen_and_forgets_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ledger.json");
        let mut ledger = Ledger::open(&path).unwrap();
        let a = route("rtb-aaaaaaaa", "10.1.0.0/16", "eni-11111111");
        let b = route("rtb-aaaaaaaa", "10.2.0.0/16", "eni-11111111");
        ledger.will_create(&a).unwrap();
        ledger
            .will_replace(&b, &Target::Other("tgw-22222222".into()))
            .unwrap();
        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(reopened.record(), ledger.record());
        assert_eq!(
            reopened.record().created_eni("rtb-aaaaaaaa", a.destination),
            Some("eni-11111111")
        );
        assert_eq!(
            reopened
                .record()
                .replaced_target("rtb-aaaaaaaa", b.destination),
            Some(&Target::Other("tgw-22222222".into()))
        );
        ledger.forget("rtb-aaaaaaaa", b.destination).unwrap();
        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(
            reopened
                .record()
                .replaced_target("rtb-aaaaaaaa", b.destination),
            None
        );
        assert_eq!(
            reopened.record().created_eni("rtb-aaaaaaaa", b.destination),
            None
        );
        assert_eq!(reopened.record().slots().len(), 1);
    }

    #[test]
    fn a_corrupt_ledger_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        std::fs::write(&path, "{ not json").unwrap();
        let e = Ledger::open(&path).unwrap_err();
        assert!(e.to_string().contains("move it aside"), "{e}");
    }

    #[test]
    fn an_unwritable_ledger_keeps_memory_and_disk_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let mut ledger = Ledger::open(&path).unwrap();
        // Make the directory unwritable by replacing it with a file.
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path(), "").unwrap();
        let r = route("rtb-aaaaaaaa", "10.1.0.0/16", "eni-11111111");
        assert!(ledger.will_create(&r).is_err());
        assert!(ledger.record().is_empty(), "recorded what was not saved");
        let _ = std::fs::remove_file(dir.path());
    }

    #[test]
    fn stale_entries_are_those_the_tables_do_not_bear_out() {
        let mut record = Record::default();
        let a = route("rtb-aaaaaaaa", "10.1.0.0/16", "eni-11111111");
        let b = route("rtb-aaaaaaaa", "10.2.0.0/16", "eni-11111111");
        let c = route("rtb-aaaaaaaa", "10.3.0.0/16", "eni-11111111");
        let gone = route("rtb-bbbbbbbb", "10.1.0.0/16", "eni-11111111");
        let kept = route("rtb-cccccccc", "10.1.0.0/16", "eni-11111111");
        for r in [&a, &b, &c, &gone, &kept] {
            record.insert_created(r);
        }
        let observed = [table(
            "rtb-aaaaaaaa",
            &[
                // Still ours.
                (
                    "10.1.0.0/16",
                    Target::NetworkInterface("eni-11111111".into()),
                ),
                // Somebody pointed it elsewhere: no longer ours.
                ("10.2.0.0/16", Target::Other("tgw-22222222".into())),
                // 10.3.0.0/16 is absent.
            ],
        )];
        // rtb-b is gone and no longer configured; rtb-c is configured but missing.
        let configured: BTreeSet<String> = ["rtb-aaaaaaaa".into(), "rtb-cccccccc".into()].into();
        let stale = record.stale(&observed, &configured, |_, _| None);
        assert_eq!(
            stale,
            vec![
                ("rtb-aaaaaaaa".to_string(), b.destination),
                ("rtb-aaaaaaaa".to_string(), c.destination),
                ("rtb-bbbbbbbb".to_string(), gone.destination),
            ]
        );
    }

    #[test]
    fn file_names_follow_the_config_path() {
        assert_eq!(
            file_name(Path::new("/etc/route-failover/config.toml")),
            "routes-etc-route-failover-config.toml.json"
        );
    }
}
