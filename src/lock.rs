//! One agent per config, and one agent per route table, on a host. A second
//! agent with the same config, or with another config that manages any of
//! the same tables, would fight the first over the same routes.
//!
//! Advisory locks on files in one directory: one named after the config's
//! path, one per managed route table. The kernel drops them when the process
//! dies, so a crash never leaves a stale lock behind. Each lock file holds
//! the holder's pid and config, so a refusal can name both.
//!
//! Agents of an HA pair manage the same tables on purpose; in tests they run
//! side by side on one host. Each gets an agent id, which then becomes part of
//! its table locks' names, so distinct agents do not exclude each other.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// One held lock file; released when dropped.
#[derive(Debug)]
struct Held {
    _file: File,
    path: PathBuf,
}

/// Every lock an agent holds, for as long as it runs.
#[derive(Debug)]
pub struct AgentLocks {
    dir: PathBuf,
    config: PathBuf,
    agent: Option<String>,
    config_lock: Held,
    tables: BTreeMap<String, Held>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another route-failover (pid {pid}) is already running with {config} (lock {lock})")]
    Held {
        pid: String,
        config: PathBuf,
        lock: PathBuf,
    },
    #[error(
        "route table {table} is already managed by another route-failover (pid {pid}, config \
         {config}): two agents must not manage one table; remove it from one of the configs \
         (lock {lock})"
    )]
    TableHeld {
        table: String,
        pid: String,
        /// The other agent's config.
        config: String,
        lock: PathBuf,
    },
    #[error("cannot use lock file {lock}: {error}")]
    Io {
        lock: PathBuf,
        error: std::io::Error,
    },
}

/// Where lock files live: systemd's `RuntimeDirectory` when set, else
/// /run/route-failover when it can be made, else the temp directory.
fn lock_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several, separated by colons; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    let run = PathBuf::from("/run/route-failover");
    if std::fs::create_dir_all(&run).is_ok() {
        return run;
    }
    std::env::temp_dir()
}

/// `text` as a file name part: what is not alphanumeric, `.` or `_` becomes `-`.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The lock file for a config in `dir`: its absolute path, escaped like systemd does.
fn lock_path_in(dir: &Path, config: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let name = escape(absolute.to_string_lossy().trim_start_matches('/'));
    dir.join(format!("route-failover-{name}.lock"))
}

/// The lock file for a route table in `dir`; an agent id keeps distinct
/// agents of an HA pair apart.
fn table_lock_path_in(dir: &Path, table: &str, agent: Option<&str>) -> PathBuf {
    let name = match agent {
        None => format!("route-failover-table-{}.lock", escape(table)),
        Some(agent) => format!(
            "route-failover-table-{}-agent-{}.lock",
            escape(table),
            escape(agent)
        ),
    };
    dir.join(name)
}

/// The holder's pid and config, as it wrote them (empty while it is still writing).
fn holder(file: &mut File) -> (String, String) {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let mut lines = text.lines().map(str::trim);
    let pid = lines.next().filter(|p| !p.is_empty()).unwrap_or("unknown");
    let config = lines.next().filter(|c| !c.is_empty()).unwrap_or("unknown");
    (pid.to_string(), config.to_string())
}

/// Locks `path`, or returns the holder's pid and config.
fn try_lock(path: &Path, config: &Path) -> Result<Result<Held, (String, String)>, LockError> {
    let io = |error| LockError::Io {
        lock: path.to_path_buf(),
        error,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(Err(holder(&mut file))),
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}\n{}", std::process::id(), absolute.display()).map_err(io)?;
    Ok(Ok(Held {
        _file: file,
        path: path.to_path_buf(),
    }))
}

/// Takes the lock for `config` and one for each of `tables`, or says which
/// agent holds one. `agent` is the agent's id in an HA pair (none for now).
pub fn acquire(
    config: &Path,
    tables: &[String],
    agent: Option<&str>,
) -> Result<AgentLocks, LockError> {
    acquire_in(&lock_dir(), config, tables, agent)
}

fn acquire_in(
    dir: &Path,
    config: &Path,
    tables: &[String],
    agent: Option<&str>,
) -> Result<AgentLocks, LockError> {
    let path = lock_path_in(dir, config);
    let config_lock = try_lock(&path, config)?.map_err(|(pid, _)| LockError::Held {
        pid,
        config: config.to_path_buf(),
        lock: path,
    })?;
    let mut locks = AgentLocks {
        dir: dir.to_path_buf(),
        config: config.to_path_buf(),
        agent: agent.map(str::to_string),
        config_lock,
        tables: BTreeMap::new(),
    };
    locks.add_tables(tables)?;
    Ok(locks)
}

impl AgentLocks {
    /// Takes the locks of the tables in `tables` not held yet (a reload that
    /// adds a table), all or none. Locks of tables dropped from the config
    /// are kept until the agent exits: it may still have routes there.
    pub fn add_tables(&mut self, tables: &[String]) -> Result<(), LockError> {
        let mut taken = Vec::new();
        for table in tables {
            if self.tables.contains_key(table) || taken.iter().any(|(t, _)| t == table) {
                continue;
            }
            let path = table_lock_path_in(&self.dir, table, self.agent.as_deref());
            match try_lock(&path, &self.config)? {
                Ok(held) => taken.push((table.clone(), held)),
                Err((pid, config)) => {
                    return Err(LockError::TableHeld {
                        table: table.clone(),
                        pid,
                        config,
                        lock: path,
                    })
                }
            }
        }
        self.tables.extend(taken);
        Ok(())
    }

    /// The config's lock file.
    pub fn config_lock(&self) -> &Path {
        &self.config_lock.path
    }

    /// The route tables locked, sorted.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "rtb-0a11aa11aa11aa110";
    const B: &str = "rtb-0b22bb22bb22bb220";
    const C: &str = "rtb-0c33cc33cc33cc330";

    fn tables(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|t| (*t).to_string()).collect()
    }

    fn config(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "").unwrap();
        path
    }

    #[test]
    fn a_second_holder_is_refused_and_told_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "config.toml");
        let first = acquire_in(dir.path(), &config, &tables(&[A]), None).expect("first lock");
        let e = acquire_in(dir.path(), &config, &tables(&[A]), None).unwrap_err();
        match &e {
            LockError::Held { pid, lock, .. } => {
                assert_eq!(*pid, std::process::id().to_string());
                assert_eq!(lock, first.config_lock());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("already running"), "{e}");
        // Released when the holder goes away.
        drop(first);
        assert!(acquire_in(dir.path(), &config, &tables(&[A]), None).is_ok());
    }

    #[test]
    fn another_config_sharing_a_table_is_refused_naming_table_pid_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let one = config(dir.path(), "one.toml");
        let two = config(dir.path(), "two.toml");
        let first = acquire_in(dir.path(), &one, &tables(&[A, B]), None).unwrap();
        let e = acquire_in(dir.path(), &two, &tables(&[C, B]), None).unwrap_err();
        match &e {
            LockError::TableHeld {
                table, pid, config, ..
            } => {
                assert_eq!(table, B);
                assert_eq!(*pid, std::process::id().to_string());
                assert_eq!(
                    *config,
                    std::fs::canonicalize(&one).unwrap().display().to_string()
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains(&format!("route table {B} is already managed"))
                && text.contains("one.toml"),
            "{text}"
        );
        // The refused agent holds nothing: its config and table C are free,
        // and with disjoint tables it runs beside the first.
        let again = acquire_in(dir.path(), &two, &tables(&[C]), None).expect("two.toml with C");
        assert_eq!(again.tables().collect::<Vec<_>>(), [C]);
        drop(first);
    }

    #[test]
    fn distinct_agent_ids_share_tables_but_one_id_twice_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let one = config(dir.path(), "one.toml");
        let two = config(dir.path(), "two.toml");
        let three = config(dir.path(), "three.toml");
        let _a = acquire_in(dir.path(), &one, &tables(&[A]), Some("agent-a")).unwrap();
        let _b = acquire_in(dir.path(), &two, &tables(&[A]), Some("agent-b")).unwrap();
        let e = acquire_in(dir.path(), &three, &tables(&[A]), Some("agent-a")).unwrap_err();
        assert!(matches!(e, LockError::TableHeld { .. }), "{e}");
    }

    #[test]
    fn a_reload_adds_table_locks_all_or_none_and_keeps_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let one = config(dir.path(), "one.toml");
        let two = config(dir.path(), "two.toml");
        let mut first = acquire_in(dir.path(), &one, &tables(&[A]), None).unwrap();
        let _second = acquire_in(dir.path(), &two, &tables(&[C]), None).unwrap();
        // B is free, C is not: nothing is taken.
        assert!(first.add_tables(&tables(&[B, C])).is_err());
        assert_eq!(first.tables().collect::<Vec<_>>(), [A]);
        let third = config(dir.path(), "three.toml");
        let b = acquire_in(dir.path(), &third, &tables(&[B]), None).expect("B was released");
        drop(b);
        // A table dropped from the config stays locked.
        first.add_tables(&tables(&[B])).unwrap();
        assert_eq!(first.tables().collect::<Vec<_>>(), [A, B]);
        assert!(acquire_in(dir.path(), &third, &tables(&[A]), None).is_err());
    }

    #[test]
    fn lock_names_follow_the_config_path_the_table_and_the_agent() {
        let p = lock_path_in(
            Path::new("/run/x"),
            Path::new("/etc/route-failover/config.toml"),
        );
        assert_eq!(
            p,
            Path::new("/run/x/route-failover-etc-route-failover-config.toml.lock")
        );
        assert_eq!(
            table_lock_path_in(Path::new("/run/x"), A, None),
            Path::new("/run/x/route-failover-table-rtb-0a11aa11aa11aa110.lock")
        );
        assert_eq!(
            table_lock_path_in(Path::new("/run/x"), A, Some("az-b")),
            Path::new("/run/x/route-failover-table-rtb-0a11aa11aa11aa110-agent-az-b.lock")
        );
    }
}
