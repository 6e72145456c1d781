//! [`UserId`]: a user id string shared, in one pointer, by a shard's
//! session records, its user index and the Redis subscriber's wanted set.
//!
//! Every distinct user of an idle node costs this string, a slot of the
//! shard's user index and an entry of the subscriber's wanted set
//! (`ws:user:{id}`). `Arc<str>` would take 16 bytes in each record and in
//! each wanted-set entry (a fat pointer) and 16 bytes of counters in the
//! allocation; `UserId` is a thin pointer to a 4-byte count, a 4-byte
//! length and a 4-byte word for the wanted set's entry, followed by the
//! bytes: "bench-1234" fits a 24-byte allocation instead of 32 (ids of
//! 13–16 bytes take a 32-byte one since the header grew from 8 to 12
//! bytes), a record holds 8 bytes instead of 16 and a wanted-set slot 8
//! (a `HashMap<Arc<str>, Entry>` slot took 24; PERFORMANCE.md, "Idle
//! memory and connect, fourth session" and "sixth session").
//!
//! The one module with its own unsafe code besides `mem`: a thin,
//! counted pointer cannot be written with `Arc` (whose `str` pointer is
//! fat). Each unsafe block says why it holds; the tests below run every
//! path (allocation, clones and drops on several threads, the last free).
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering, fence};

#[repr(C)]
struct Header {
    /// Live `UserId`s pointing here.
    count: AtomicU32,
    /// Bytes of the id after the header.
    len: u32,
    /// [`UserId::aux`]: bookkeeping of the one holder that keeps any (the
    /// Redis subscriber's wanted set), so that its table holds a pointer
    /// per user and not a pointer and a word padded to 16 bytes.
    aux: AtomicU32,
}

/// An immutable, reference-counted user id string (see the module doc).
/// Cloning it counts; the last drop frees it. It can be sent to another
/// thread (the subscriber's) like `Arc<str>`.
pub struct UserId(NonNull<Header>);

// SAFETY: the pointee is immutable apart from its atomic count and its
// atomic `aux` word (plain loads and stores, see `UserId::aux`); the count
// follows `Arc`'s protocol (clones Relaxed, drops Release, the freeing drop
// Acquire), so sharing and sending between threads is sound. Exercised by
// `tests::the_last_drop_on_another_thread_frees_it_once` and
// `tests::clones_dropped_elsewhere_keep_the_count_exact`.
unsafe impl Send for UserId {}
// SAFETY: as for `Send`.
unsafe impl Sync for UserId {}

/// Clones past this abort, as `Arc`'s do past `isize::MAX`: a count that
/// wrapped would free a string still in use.
const MAX_COUNT: u32 = i32::MAX as u32;

impl UserId {
    /// The longest id a `UserId` holds. Ids come from a frame of at most
    /// `--max-payload` bytes or an authenticator's answer, far below it.
    pub const MAX_LEN: usize = (u32::MAX as usize) - std::mem::size_of::<Header>();

    fn layout(len: usize) -> Option<Layout> {
        if len > Self::MAX_LEN {
            return None;
        }
        let size = std::mem::size_of::<Header>() + len;
        Layout::from_size_align(size, std::mem::align_of::<Header>()).ok()
    }

    /// A new id holding a copy of `s`; `None` when `s` is longer than
    /// [`UserId::MAX_LEN`].
    pub fn new(s: &str) -> Option<UserId> {
        let layout = Self::layout(s.len())?;
        // SAFETY: the layout's size is at least the header's (non-zero).
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<Header>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: `ptr` is a fresh allocation of `layout`: room for the
        // header, aligned for it, then `s.len()` bytes; nothing else
        // refers to it yet.
        unsafe {
            ptr.as_ptr().write(Header {
                count: AtomicU32::new(1),
                // `layout` refused lengths above MAX_LEN (< u32::MAX).
                len: s.len() as u32,
                aux: AtomicU32::new(0),
            });
            std::ptr::copy_nonoverlapping(
                s.as_ptr(),
                raw.add(std::mem::size_of::<Header>()),
                s.len(),
            );
        }
        Some(UserId(ptr))
    }

    /// A word stored with the id, 0 when it is made. It belongs to whoever
    /// keeps this allocation as a table key and says so: the Redis
    /// subscriber's wanted set ([`crate::bridge`]'s interest tracking) keeps
    /// its entry for the user here, for the allocation it holds as the key
    /// (other holders of the same allocation never read or write it, and
    /// other allocations of the same id have their own word).
    pub(crate) fn aux(&self) -> u32 {
        self.header().aux.load(Ordering::Relaxed)
    }

    /// Set [`UserId::aux`].
    pub(crate) fn set_aux(&self, v: u32) {
        self.header().aux.store(v, Ordering::Relaxed)
    }

    fn header(&self) -> &Header {
        // SAFETY: the allocation lives while any `UserId` points to it, and
        // `self` is one.
        unsafe { self.0.as_ref() }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        let len = self.header().len as usize;
        // SAFETY: `new` wrote `len` bytes of a `str` right after the
        // header; they are never changed while the allocation lives.
        unsafe {
            let bytes = self
                .0
                .as_ptr()
                .cast::<u8>()
                .add(std::mem::size_of::<Header>());
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(bytes, len))
        }
    }

    /// Whether both point to the same allocation.
    pub fn ptr_eq(a: &UserId, b: &UserId) -> bool {
        a.0 == b.0
    }
}

impl Clone for UserId {
    fn clone(&self) -> UserId {
        let old = self.header().count.fetch_add(1, Ordering::Relaxed);
        if old > MAX_COUNT {
            std::process::abort();
        }
        UserId(self.0)
    }
}

impl Drop for UserId {
    fn drop(&mut self) {
        if self.header().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        #[cfg(test)]
        tests::note_free(self.as_str());
        let len = self.header().len as usize;
        let layout = Self::layout(len);
        // `new` made it with this layout: it cannot be refused now.
        debug_assert!(layout.is_some());
        if let Some(layout) = layout {
            // SAFETY: this was the last `UserId` of an allocation made by
            // `new` with this same layout (same length).
            unsafe { std::alloc::dealloc(self.0.as_ptr().cast::<u8>(), layout) }
        }
    }
}

impl Deref for UserId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for UserId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for UserId {
    fn eq(&self, other: &UserId) -> bool {
        UserId::ptr_eq(self, other) || self.as_str() == other.as_str()
    }
}

impl Eq for UserId {}

/// Hashes as the `str` does, so maps keyed by `UserId` are looked up by
/// `&str`.
impl Hash for UserId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn id(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn holds_the_string_it_was_made_from() {
        for s in ["", "u", "bench-1234", "ünïcödé ✓", &"x".repeat(70_000)] {
            let u = id(s);
            assert_eq!(u.as_str(), s);
            assert_eq!(&*u.clone(), s);
            assert_eq!(u.to_string(), s);
            assert_eq!(format!("{u:?}"), format!("{s:?}"));
        }
    }

    #[test]
    fn the_aux_word_starts_at_zero_and_belongs_to_the_allocation() {
        let a = id("bench-1234");
        let b = id("bench-1234");
        assert_eq!((a.aux(), b.aux()), (0, 0));
        a.set_aux(0xdead_beef);
        assert_eq!(a.clone().aux(), 0xdead_beef, "clones share the word");
        assert_eq!(b.aux(), 0, "another allocation of the same id has its own");
        assert_eq!(a.as_str(), "bench-1234");
        assert_eq!(a, b);
    }

    #[test]
    fn one_pointer_and_a_niche() {
        assert_eq!(std::mem::size_of::<UserId>(), 8);
        assert_eq!(std::mem::size_of::<Option<UserId>>(), 8);
    }

    #[test]
    fn equal_ids_hash_and_compare_as_their_strings() {
        let mut m: HashMap<UserId, u32> = HashMap::new();
        m.insert(id("alice"), 1);
        // A second allocation of the same id is the same key.
        *m.entry(id("alice")).or_default() += 1;
        m.insert(id("bob"), 5);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("alice"), Some(&2));
        assert_eq!(m.get("bob"), Some(&5));
        assert_eq!(m.get("carol"), None);
        assert_ne!(id("alice"), id("alicf"));
        assert!(!UserId::ptr_eq(&id("a"), &id("a")));
    }

    /// Ids freed (by the last drop), for the tests below.
    static FREED: std::sync::Mutex<Vec<(String, std::thread::ThreadId)>> =
        std::sync::Mutex::new(Vec::new());

    pub(super) fn note_free(id: &str) {
        if id.starts_with("freed-") {
            FREED
                .lock()
                .unwrap()
                .push((id.to_owned(), std::thread::current().id()));
        }
    }

    fn frees_of(id: &str) -> Vec<std::thread::ThreadId> {
        FREED
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == id)
            .map(|(_, t)| *t)
            .collect()
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn too_long_ids_are_refused_not_truncated() {
        assert!(UserId::layout(UserId::MAX_LEN).is_some());
        assert!(UserId::layout(UserId::MAX_LEN + 1).is_none());
        assert!(UserId::layout(usize::MAX).is_none());
    }

    /// Four threads, each holding 1,000 clones of `u`: each (after
    /// `start`, if given) counts those that still read as `u` and drops
    /// them all.
    fn clones_on_four_threads(
        u: &UserId,
        start: Option<std::sync::Arc<std::sync::Barrier>>,
    ) -> Vec<std::thread::JoinHandle<usize>> {
        let want = u.as_str().to_owned();
        (0..4)
            .map(|_| {
                let mine: Vec<UserId> = (0..1000).map(|_| u.clone()).collect();
                let (start, want) = (start.clone(), want.clone());
                std::thread::spawn(move || {
                    if let Some(s) = start {
                        s.wait();
                    }
                    let n = mine.iter().filter(|c| c.as_str() == want).count();
                    drop(mine);
                    n
                })
            })
            .collect()
    }

    /// The last drop frees the string, once, on whichever thread it
    /// happens: here the creating thread lets go first and four others
    /// race for the last reference.
    #[test]
    fn the_last_drop_on_another_thread_frees_it_once() {
        let u = id("freed-on-another-thread");
        let start = std::sync::Arc::new(std::sync::Barrier::new(5));
        let handles = clones_on_four_threads(&u, Some(start.clone()));
        drop(u);
        assert!(frees_of("freed-on-another-thread").is_empty());
        start.wait();
        let threads: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(threads, [1000; 4]);
        let frees = frees_of("freed-on-another-thread");
        assert_eq!(frees.len(), 1, "freed {} times", frees.len());
        assert_ne!(frees[0], std::thread::current().id());
    }

    /// Clones dropped on other threads while the creator keeps its own
    /// leave the count exact and the string intact.
    #[test]
    fn clones_dropped_elsewhere_keep_the_count_exact() {
        let u = id("freed-kept-by-its-creator");
        let handles = clones_on_four_threads(&u, None);
        for h in handles {
            assert_eq!(h.join().unwrap(), 1000);
        }
        assert_eq!(u.header().count.load(Ordering::Relaxed), 1);
        let last = u.clone();
        drop(u);
        assert_eq!(last.header().count.load(Ordering::Relaxed), 1);
        assert_eq!(last.as_str(), "freed-kept-by-its-creator");
        assert!(frees_of("freed-kept-by-its-creator").is_empty());
        drop(last);
        assert_eq!(frees_of("freed-kept-by-its-creator").len(), 1);
    }
}
