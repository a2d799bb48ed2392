//! Revisions that grow across restarts without a write per event: the
//! state directory's `revisions.json` holds the highest revision this
//! launcher may hand out, reserved a block at a time (as a database
//! sequence caches values). A new launcher starts after the last
//! reservation, so a revision is never handed out twice, even after a
//! crash; at most a block's worth of numbers goes unused per restart.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::sources::state_file::JsonFile;

/// Revisions reserved per write.
pub const BLOCK: u64 = 1 << 16;

/// The revisions this launcher may hand out.
#[derive(Debug)]
pub struct Revisions {
    file: Option<JsonFile<u64>>,
    first: u64,
    reserved: u64,
}

impl Revisions {
    /// Reads the last reservation in `state_dir` and reserves the next
    /// block. A file that cannot be read is replaced, and revisions then
    /// continue from the time in microseconds, far above any count of
    /// events: still increasing, at the cost of a jump.
    pub fn open(state_dir: &Path) -> Self {
        let file = JsonFile::new(state_dir, "revisions.json");
        let last = match file.load() {
            Ok(v) => v.first().copied().unwrap_or(0),
            Err(e) => {
                tracing::error!("{e}; event revisions continue from the clock");
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(u64::MAX / 2, |d| {
                        u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2)
                    })
            }
        };
        let mut r = Revisions {
            file: Some(file),
            first: last.saturating_add(1),
            reserved: last,
        };
        r.reserve(r.first);
        r
    }

    /// Revisions from 1, kept nowhere.
    pub fn in_memory() -> Self {
        Revisions {
            file: None,
            first: 1,
            reserved: u64::MAX,
        }
    }

    /// The first revision of this launcher's life.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Makes sure `revision` is reserved before it is handed out. A failed
    /// write is logged: this life's revisions still grow, but a later
    /// launcher may repeat some.
    pub fn reserve(&mut self, revision: u64) {
        if revision <= self.reserved {
            return;
        }
        self.reserved = revision.saturating_add(BLOCK - 1);
        if let Some(f) = &self.file
            && let Err(e) = f.save(&[self.reserved])
        {
            tracing::error!("cannot reserve event revisions: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_life_starts_after_everything_the_last_one_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Revisions::open(dir.path());
        assert_eq!(a.first(), 1);
        // Past the first block: a second reservation.
        a.reserve(BLOCK + 5);
        let b = Revisions::open(dir.path());
        assert_eq!(b.first(), 2 * BLOCK + 5);
        let c = Revisions::open(dir.path());
        assert!(c.first() > b.first());
    }

    #[test]
    fn an_unreadable_file_continues_far_above_any_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("revisions.json"), "not json").unwrap();
        let r = Revisions::open(dir.path());
        assert!(r.first() > 1 << 50, "{}", r.first());
        // And the file is good again for the next life.
        assert!(Revisions::open(dir.path()).first() > r.first());
    }
}
