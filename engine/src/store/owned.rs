//! Directories a process owns for its lifetime (a worker's spill files, the
//! files it shares with peers), and the sweep that removes those left behind
//! by a process that died without cleaning up (SIGKILL, the OOM killer).
//!
//! An owner holds an exclusive `flock` on its directory for as long as it
//! lives; the kernel drops the lock when the process dies, whatever its PID
//! namespace. So a directory whose lock can be taken has no owner, and no pid
//! needs to be checked (a pid can be reused, or belong to another namespace).

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// A directory created for this process, locked while this value lives and
/// removed with everything in it when it is dropped.
#[derive(Debug)]
pub struct OwnedDir {
    path: PathBuf,
    /// Holds the lock: an open descriptor of the directory itself.
    _lock: File,
}

impl OwnedDir {
    /// Creates `parent/name` (and `parent` if needed), locked before it bears
    /// its name: a sweep never sees it unlocked. Fails if it already exists.
    pub fn create(parent: &Path, name: &str) -> io::Result<OwnedDir> {
        fs::create_dir_all(parent)?;
        let path = parent.join(name);
        if path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists already", path.display()),
            ));
        }
        // Sweeps pass over dot-names, so the lock is taken in peace.
        let staging = parent.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&staging)?;
        let locked = File::open(&staging).and_then(|lock| {
            lock.try_lock().map_err(io::Error::from)?;
            fs::rename(&staging, &path)?;
            Ok(lock)
        });
        match locked {
            Ok(lock) => Ok(OwnedDir { path, _lock: lock }),
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// Where the directory is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Removes each directory in `parent` whose name starts with `prefix` and
/// whose owner is gone (its lock is free), and returns their paths. Anything
/// it cannot open or lock is left alone; a missing `parent` is no error.
pub fn sweep(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owned_kind = name.to_str().is_some_and(|n| n.starts_with(prefix))
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if !owned_kind {
            continue;
        }
        let path = entry.path();
        let Ok(dir) = File::open(&path) else {
            continue;
        };
        match dir.try_lock() {
            // Held while removing, so that nobody else sweeps it meanwhile.
            Ok(()) => {
                if fs::remove_dir_all(&path).is_ok() {
                    removed.push(path);
                }
            }
            Err(TryLockError::WouldBlock) | Err(TryLockError::Error(_)) => {}
        }
    }
    removed
}

/// `parent/name`, made once the directories that dead owners left in
/// `parent` (named `prefix…`) are removed, each logged; `None`, with a
/// warning, if it cannot be made (the caller carries on without one).
pub fn claim(parent: &Path, prefix: &str, name: &str) -> Option<OwnedDir> {
    for gone in sweep(parent, prefix) {
        tracing::info!(dir = %gone.display(), "removed the files of a process that died");
    }
    OwnedDir::create(parent, name)
        .inspect_err(|e| {
            tracing::warn!(dir = %parent.join(name).display(), error = %e, "cannot make a directory of this process's own");
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_owners_directory_is_kept_and_a_dead_ones_is_swept() {
        let parent = tempfile::tempdir().unwrap();
        let live = OwnedDir::create(parent.path(), "worker-1-100").unwrap();
        fs::write(live.path().join("chunk.arrow"), b"x").unwrap();
        // What a killed owner leaves: a directory nobody holds.
        let dead = parent.path().join("worker-2-200");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("chunk.arrow"), b"x").unwrap();
        let other = parent.path().join("other-3");
        fs::create_dir(&other).unwrap();

        assert_eq!(sweep(parent.path(), "worker-"), vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(
            live.path().join("chunk.arrow").exists(),
            "a live owner's files stay"
        );
        assert!(other.exists(), "another prefix is not ours to judge");

        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists(), "an owner removes its directory when done");
        assert!(sweep(parent.path().join("missing").as_path(), "worker-").is_empty());
    }

    #[test]
    fn a_name_in_use_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let _first = OwnedDir::create(parent.path(), "worker-1-100").unwrap();
        let e = OwnedDir::create(parent.path(), "worker-1-100").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        let names: Vec<_> = fs::read_dir(parent.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no staging directory left behind");
    }
}
