//! The in-memory access tracker: every committed object's size and last
//! access time, in least-recently-accessed order.
//!
//! A doubly linked list threaded through a slab gives O(1) touch, insert,
//! remove and "oldest" — what `get` and trim need — with one allocation per
//! key (the `Rc<str>` shared by the index and the node). Access times are
//! milliseconds since the Unix epoch, made monotonic (never less than the
//! last one handed out), so list order and time order always agree and a
//! persisted tracker reloads in exactly the order it was saved.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use slab::Slab;

const NIL: u32 = u32::MAX;

struct Node {
    key: Rc<str>,
    bytes: u64,
    atime_ms: u64,
    prev: u32,
    next: u32,
}

/// One tracked object, as reported by [`Tracker::iter_oldest_first`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrackedObject {
    pub(crate) key: Rc<str>,
    pub(crate) bytes: u64,
    pub(crate) atime_ms: u64,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Tracker {
    index: HashMap<Rc<str>, u32>,
    nodes: Slab<Node>,
    /// Least recently accessed.
    head: Option<u32>,
    /// Most recently accessed.
    tail: Option<u32>,
    /// The sum of every node's `bytes`. It fits: every size tracked was
    /// first added to the ledger's `u64` total (`Ledger::try_add_used` for
    /// sizes from the disk, a reservation for commits), so an overflow here
    /// is a bug.
    bytes: u64,
    last_atime_ms: u64,
    /// Keys changed while an exhaustive walk is in flight; its results for
    /// them are stale and must not be applied.
    walk_dirty: Option<HashSet<Rc<str>>>,
    /// Set on every change, cleared when persisted.
    dirty: bool,
}

impl Tracker {
    pub(crate) fn new() -> Tracker {
        Tracker::default()
    }

    pub(crate) fn len(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// Bytes of every tracked object.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub(crate) fn mark_clean(&mut self) {
        self.dirty = false;
    }

    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// A monotonic "now" in ms since the epoch.
    pub(crate) fn now_ms(&mut self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_atime_ms = self.last_atime_ms.max(wall);
        self.last_atime_ms
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Size of `key`, if tracked.
    pub(crate) fn bytes_of(&self, key: &str) -> Option<u64> {
        let &slot = self.index.get(key)?;
        self.nodes.get(slot as usize).map(|n| n.bytes)
    }

    /// Marks `key` accessed now (moves it to the most-recent end).
    pub(crate) fn touch(&mut self, key: &str) -> bool {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        let now = self.now_ms();
        self.unlink_node(slot);
        self.push_back(slot);
        if let Some(node) = self.nodes.get_mut(slot as usize) {
            node.atime_ms = now;
        }
        self.dirty = true;
        true
    }

    /// Inserts or replaces `key` as the most recently accessed object.
    /// Returns the replaced object's size.
    pub(crate) fn insert_now(&mut self, key: &str, bytes: u64) -> Option<u64> {
        let now = self.now_ms();
        self.insert_at(key, bytes, now)
    }

    /// Inserts or replaces `key` with a given access time, at the most-recent
    /// end. Loading calls this in ascending time order.
    pub(crate) fn insert_at(&mut self, key: &str, bytes: u64, atime_ms: u64) -> Option<u64> {
        let old = self.remove(key);
        let key: Rc<str> = Rc::from(key);
        let slot = self.nodes.insert(Node {
            key: Rc::clone(&key),
            bytes,
            atime_ms,
            prev: NIL,
            next: NIL,
        });
        let Ok(slot) = u32::try_from(slot) else {
            // OBJECTS_LIMIT_MAX keeps us far below u32::MAX nodes.
            panic!("tracker slot index {slot} exceeds u32");
        };
        self.push_back(slot);
        self.last_atime_ms = self.last_atime_ms.max(atime_ms);
        self.bytes = self
            .bytes
            .checked_add(bytes)
            .expect("tracked bytes past u64::MAX: the ledger admits every size first");
        self.note_changed(&key);
        self.index.insert(key, slot);
        self.dirty = true;
        old
    }

    /// Inserts `key` (not yet tracked) as the *least* recently accessed
    /// object: an exhaustive walk adopts untracked files this way so they are
    /// trimmed first.
    pub(crate) fn insert_oldest(&mut self, key: &str, bytes: u64, atime_ms: u64) {
        self.insert_at(key, bytes, atime_ms);
        let Some(&slot) = self.index.get(key) else {
            return;
        };
        self.unlink_node(slot);
        let old_head = self.head;
        if let Some(node) = self.nodes.get_mut(slot as usize) {
            node.prev = NIL;
            node.next = old_head.unwrap_or(NIL);
            // Keep list order and time order in agreement.
            let head_time = old_head
                .and_then(|h| self.nodes.get(h as usize))
                .map_or(atime_ms, |h| h.atime_ms);
            if let Some(node) = self.nodes.get_mut(slot as usize) {
                node.atime_ms = atime_ms.min(head_time);
            }
        }
        match old_head {
            Some(h) => {
                if let Some(node) = self.nodes.get_mut(h as usize) {
                    node.prev = slot;
                }
            }
            None => self.tail = Some(slot),
        }
        self.head = Some(slot);
    }

    /// Corrects a tracked object's size.
    pub(crate) fn set_bytes(&mut self, key: &str, bytes: u64) {
        let Some(&slot) = self.index.get(key) else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(slot as usize) {
            self.bytes = self
                .bytes
                .checked_sub(node.bytes)
                .and_then(|rest| rest.checked_add(bytes))
                .expect("tracked bytes out of u64: the ledger admits every size first");
            node.bytes = bytes;
        }
        self.dirty = true;
    }

    /// Removes `key`; returns its size.
    pub(crate) fn remove(&mut self, key: &str) -> Option<u64> {
        let slot = self.index.remove(key)?;
        self.unlink_node(slot);
        let node = self.nodes.remove(slot as usize);
        self.bytes = self
            .bytes
            .checked_sub(node.bytes)
            .expect("tracked bytes below an object's size: the sum is off");
        self.note_changed(&node.key);
        self.dirty = true;
        Some(node.bytes)
    }

    /// The least recently accessed key that `skip` does not exclude.
    pub(crate) fn oldest_where(&self, skip: impl Fn(&str) -> bool) -> Option<(Rc<str>, u64)> {
        let mut cursor = self.head;
        while let Some(slot) = cursor {
            let node = self.nodes.get(slot as usize)?;
            if !skip(&node.key) {
                return Some((Rc::clone(&node.key), node.bytes));
            }
            cursor = (node.next != NIL).then_some(node.next);
        }
        None
    }

    /// Every tracked object, least recently accessed first.
    pub(crate) fn iter_oldest_first(&self) -> impl Iterator<Item = TrackedObject> + '_ {
        let mut cursor = self.head;
        std::iter::from_fn(move || {
            let slot = cursor?;
            let node = self.nodes.get(slot as usize)?;
            cursor = (node.next != NIL).then_some(node.next);
            Some(TrackedObject {
                key: Rc::clone(&node.key),
                bytes: node.bytes,
                atime_ms: node.atime_ms,
            })
        })
    }

    /// Starts recording changed keys for an exhaustive walk.
    pub(crate) fn begin_walk(&mut self) {
        self.walk_dirty = Some(HashSet::new());
    }

    /// Stops recording; returns the keys changed since `begin_walk`.
    pub(crate) fn end_walk(&mut self) -> HashSet<Rc<str>> {
        self.walk_dirty.take().unwrap_or_default()
    }

    /// Records `key` as changed for an exhaustive walk in flight, for a
    /// change the tracker does not see itself (an untracked file removed).
    pub(crate) fn note_walk_change(&mut self, key: &str) {
        if let Some(dirty) = self.walk_dirty.as_mut() {
            dirty.insert(Rc::from(key));
        }
    }

    fn note_changed(&mut self, key: &Rc<str>) {
        if let Some(dirty) = self.walk_dirty.as_mut() {
            dirty.insert(Rc::clone(key));
        }
    }

    fn unlink_node(&mut self, slot: u32) {
        let (prev, next) = match self.nodes.get(slot as usize) {
            Some(node) => (node.prev, node.next),
            None => return,
        };
        match prev {
            NIL => self.head = (next != NIL).then_some(next),
            p => {
                if let Some(n) = self.nodes.get_mut(p as usize) {
                    n.next = next;
                }
            }
        }
        match next {
            NIL => self.tail = (prev != NIL).then_some(prev),
            n => {
                if let Some(node) = self.nodes.get_mut(n as usize) {
                    node.prev = prev;
                }
            }
        }
        if let Some(node) = self.nodes.get_mut(slot as usize) {
            node.prev = NIL;
            node.next = NIL;
        }
    }

    fn push_back(&mut self, slot: u32) {
        let old_tail = self.tail;
        if let Some(node) = self.nodes.get_mut(slot as usize) {
            node.prev = old_tail.unwrap_or(NIL);
            node.next = NIL;
        }
        match old_tail {
            Some(t) => {
                if let Some(node) = self.nodes.get_mut(t as usize) {
                    node.next = slot;
                }
            }
            None => self.head = Some(slot),
        }
        self.tail = Some(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(t: &Tracker) -> Vec<String> {
        t.iter_oldest_first().map(|o| o.key.to_string()).collect()
    }

    #[test]
    fn touch_moves_to_most_recent() {
        let mut t = Tracker::new();
        t.insert_now("a", 1);
        t.insert_now("b", 2);
        t.insert_now("c", 3);
        assert_eq!(order(&t), ["a", "b", "c"]);
        assert!(t.touch("a"));
        assert_eq!(order(&t), ["b", "c", "a"]);
        assert_eq!(
            t.oldest_where(|_| false).map(|(k, _)| k.to_string()),
            Some("b".into())
        );
        assert_eq!(
            t.oldest_where(|k| k == "b").map(|(k, _)| k.to_string()),
            Some("c".into())
        );
        assert_eq!(t.bytes(), 6);
        assert_eq!(t.remove("c"), Some(3));
        assert_eq!(order(&t), ["b", "a"]);
        assert_eq!(t.insert_now("b", 10), Some(2));
        assert_eq!(order(&t), ["a", "b"]);
        assert_eq!(t.bytes(), 11);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn access_times_are_monotonic_along_the_list() {
        let mut t = Tracker::new();
        for i in 0..100 {
            t.insert_now(&format!("k{i}"), i);
        }
        t.touch("k3");
        let times: Vec<u64> = t.iter_oldest_first().map(|o| o.atime_ms).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn insert_oldest_goes_first() {
        let mut t = Tracker::new();
        t.insert_now("a", 1);
        t.insert_now("b", 1);
        t.insert_oldest("z", 5, u64::MAX);
        assert_eq!(order(&t), ["z", "a", "b"]);
        let times: Vec<u64> = t.iter_oldest_first().map(|o| o.atime_ms).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        t.set_bytes("z", 2);
        assert_eq!(t.bytes(), 4);
        let mut empty = Tracker::new();
        empty.insert_oldest("only", 1, 7);
        assert_eq!(order(&empty), ["only"]);
        empty.insert_now("next", 1);
        assert_eq!(order(&empty), ["only", "next"]);
    }

    #[test]
    fn walk_records_changed_keys() {
        let mut t = Tracker::new();
        t.insert_now("a", 1);
        t.begin_walk();
        t.insert_now("b", 1);
        t.remove("a");
        let dirty = t.end_walk();
        assert!(dirty.contains("a") && dirty.contains("b"));
        t.insert_now("c", 1);
        assert!(t.end_walk().is_empty());
    }
}
