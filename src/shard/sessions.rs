//! Sessions per user across the shards of a process, for
//! `--max-sessions-per-user`: the one piece of shard state that is shared.
//! Touched at authentication and removal only (never on delivery), through
//! one of 64 locks picked by the user id's hash.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// Live sessions per user id.
#[derive(Debug)]
pub struct UserSessions {
    limit: usize,
    hasher: RandomState,
    parts: Vec<Mutex<HashMap<Box<str>, usize>>>,
}

impl UserSessions {
    /// At most `limit` sessions per user (`limit` > 0).
    pub fn new(limit: usize) -> Self {
        UserSessions {
            limit,
            hasher: RandomState::new(),
            parts: (0..64).map(|_| Mutex::default()).collect(),
        }
    }

    fn part(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<Box<str>, usize>> {
        let i = (self.hasher.hash_one(user) % self.parts.len() as u64) as usize;
        // A panic while holding a part leaves a map that is still
        // consistent (one insert or decrement): carry on with it.
        self.parts[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one more session of `user`; false (nothing counted) if it
    /// already holds the limit.
    pub fn try_add(&self, user: &str) -> bool {
        let mut m = self.part(user);
        match m.get_mut(user) {
            Some(n) if *n >= self.limit => false,
            Some(n) => {
                *n += 1;
                true
            }
            None => {
                m.insert(user.into(), 1);
                true
            }
        }
    }

    /// One session of `user` ended.
    pub fn remove(&self, user: &str) {
        let mut m = self.part(user);
        if let Some(n) = m.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                m.remove(user);
            }
        }
    }

    /// Sessions of `user` now.
    pub fn count(&self, user: &str) -> usize {
        self.part(user).get(user).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_and_ended_sessions_free_their_slot() {
        let s = UserSessions::new(2);
        assert!(s.try_add("u"));
        assert!(s.try_add("u"));
        assert!(!s.try_add("u"));
        assert!(s.try_add("v"), "other users are not affected");
        s.remove("u");
        assert_eq!(s.count("u"), 1);
        assert!(s.try_add("u"));
        s.remove("u");
        s.remove("u");
        assert_eq!(s.count("u"), 0);
        s.remove("u");
        assert_eq!(s.count("u"), 0, "a stray removal does not underflow");
    }
}
