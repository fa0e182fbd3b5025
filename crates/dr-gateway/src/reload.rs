//! Picks up files that change while the gateway runs (TLS certificate and key, client
//! CA bundle, token file, authorization policy): a task polls their contents on an
//! interval and, when they differ, runs the owner's reload. A reload that fails keeps
//! what was loaded before and logs a WARN (the error names the file, never its
//! contents).
//!
//! why polling a content digest, not inotify (`notify`): Kubernetes updates a mounted
//! Secret or ConfigMap by swapping a `..data` symlink to a new directory, so the
//! watched inode never changes and an inotify watch on the file sees nothing (one on
//! the directory sees the swap, but only if it was set up on the right level and is
//! re-armed after each swap). cert-manager, an operator's `cp`, a volume from a
//! sidecar all land in the same place: new bytes behind the same path. Reading a few
//! small files every few seconds is robust to all of them and costs nothing
//! measurable; a change is seen within one interval (Kubernetes itself takes up to a
//! minute to propagate a Secret change to the pod).

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// A value that a reload replaces as a whole; readers take the current one.
#[derive(Debug)]
pub struct Reloadable<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Reloadable<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Self {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The value in force now (later replacements do not change it).
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `value` in force for every later [`current`](Self::current).
    pub fn replace(&self, value: T) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

/// The files one owner loads, and a digest of what they held when last looked at.
#[derive(Debug, Clone)]
pub struct WatchedFiles {
    what: &'static str,
    paths: Vec<PathBuf>,
    seen: Option<[u8; 32]>,
}

impl WatchedFiles {
    /// Takes a digest of `paths` now: call this *before* the first load, so a change
    /// between the two is picked up by the next poll rather than lost.
    pub fn new(what: &'static str, paths: Vec<PathBuf>) -> Self {
        let seen = digest_now(&paths);
        Self { what, paths, seen }
    }

    /// Polls every `interval` until `shutdown`; runs `reload` each time the files'
    /// contents differ from the last ones seen. A failed reload is logged at WARN and
    /// the previous configuration stays in force; it is not retried until the files
    /// change again.
    pub fn spawn<E, F>(
        mut self,
        interval: Duration,
        shutdown: CancellationToken,
        reload: F,
    ) -> tokio::task::JoinHandle<()>
    where
        E: Display,
        F: Fn() -> Result<(), E> + Send + 'static,
    {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match self.poll().await {
                    Change::None => {}
                    Change::Unreadable => tracing::warn!(
                        what = self.what,
                        files = ?self.paths,
                        "cannot read the files; keeping the previous configuration"
                    ),
                    Change::Changed => match reload() {
                        Ok(()) => tracing::info!(what = self.what, "reloaded"),
                        Err(e) => tracing::warn!(
                            what = self.what,
                            error = %e,
                            "reload failed; keeping the previous configuration"
                        ),
                    },
                }
            }
        })
    }

    /// Whether the files changed since the last look (each change is reported once).
    pub async fn poll(&mut self) -> Change {
        let now = digest(&self.paths).await;
        if now == self.seen {
            return Change::None;
        }
        self.seen = now;
        if now.is_some() {
            Change::Changed
        } else {
            Change::Unreadable
        }
    }
}

/// What [`WatchedFiles::poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The same contents as last time.
    None,
    /// New contents: reload.
    Changed,
    /// A file is missing or unreadable now (reported once until it changes again).
    Unreadable,
}

/// SHA-256 over every file's length and bytes, in order; `None` if one is unreadable.
async fn digest(paths: &[PathBuf]) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    for path in paths {
        let bytes = tokio::fs::read(path).await.ok()?;
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(&bytes);
    }
    Some(hasher.finalize().into())
}

fn digest_now(paths: &[PathBuf]) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    for path in paths {
        let bytes = std::fs::read(path).ok()?;
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(&bytes);
    }
    Some(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_is_reported_once_and_unreadable_files_are_not_a_change() {
        let dir = std::env::temp_dir().join(format!("drgw-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "x").unwrap();
        let mut watched = WatchedFiles::new("test", vec![a.clone(), b.clone()]);
        assert_eq!(watched.poll().await, Change::None);
        std::fs::write(&b, "y").unwrap();
        assert_eq!(watched.poll().await, Change::Changed);
        assert_eq!(watched.poll().await, Change::None);
        // Moving bytes between files is a change too (lengths are hashed).
        std::fs::write(&a, "on").unwrap();
        std::fs::write(&b, "ey").unwrap();
        assert_eq!(watched.poll().await, Change::Changed);
        std::fs::remove_file(&a).unwrap();
        assert_eq!(watched.poll().await, Change::Unreadable);
        assert_eq!(watched.poll().await, Change::None);
        std::fs::write(&a, "on").unwrap();
        assert_eq!(watched.poll().await, Change::Changed);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn readers_keep_the_value_they_took_after_a_replace() {
        let value = Reloadable::new(1);
        let before = value.current();
        value.replace(2);
        assert_eq!((*before, *value.current()), (1, 2));
    }
}
