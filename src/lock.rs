//! One agent per config on a host: a second one with the same config would
//! fight the first over the same routes. An advisory lock on a file named
//! after the config's path; the kernel drops it when the process dies, so a
//! crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Held for as long as the agent runs.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another route-failover (pid {pid}) is already running with {config} (lock {lock})")]
    Held {
        pid: String,
        config: PathBuf,
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

/// The lock file for a config in `dir`: its absolute path, escaped like systemd does.
fn lock_path_in(dir: &Path, config: &Path) -> PathBuf {
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
    dir.join(format!("route-failover-{name}.lock"))
}

/// Takes the lock for `config`, or says which pid holds it.
pub fn acquire(config: &Path) -> Result<InstanceLock, LockError> {
    acquire_in(&lock_dir(), config)
}

fn acquire_in(dir: &Path, config: &Path) -> Result<InstanceLock, LockError> {
    let path = lock_path_in(dir, config);
    let io = |error| LockError::Io {
        lock: path.clone(),
        error,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::Held {
                pid: pid.trim().to_string(),
                config: config.to_path_buf(),
                lock: path,
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(InstanceLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let first = acquire_in(dir.path(), &config).expect("first lock");
        let e = acquire_in(dir.path(), &config).unwrap_err();
        match &e {
            LockError::Held { pid, lock, .. } => {
                assert_eq!(*pid, std::process::id().to_string());
                assert_eq!(*lock, first.path);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("already running"), "{e}");
        // Another config is another lock.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "").unwrap();
        assert!(acquire_in(dir.path(), &other).is_ok());
        // Released when the holder goes away.
        drop(first);
        assert!(acquire_in(dir.path(), &config).is_ok());
    }

    #[test]
    fn lock_names_follow_the_config_path() {
        let p = lock_path_in(
            Path::new("/run/x"),
            Path::new("/etc/route-failover/config.toml"),
        );
        assert_eq!(
            p,
            Path::new("/run/x/route-failover-etc-route-failover-config.toml.lock")
        );
    }
}
