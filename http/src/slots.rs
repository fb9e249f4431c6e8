//! Counted slots: at most `per_key` held at once by one key (an address, a member) and at most
//! `total` by everyone. A slot is given back when it is dropped, so a connection or a stream
//! that ends in any way (finished, failed, client gone) frees its slot.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// The key holds `per_key` slots already.
    Key,
    /// Everyone together holds `total` slots already.
    Total,
}

/// The table of slots held, by key.
#[derive(Debug)]
pub struct Slots<K> {
    /// Per key; 0: no cap.
    per_key: usize,
    /// For everyone; 0: no cap.
    total: usize,
    /// Slots held per key, and in all. One mutex for both: taking a slot checks and counts
    /// both caps at once, and it is held for a map operation only.
    held: Mutex<(HashMap<K, usize>, usize)>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// A table with these caps (0: no cap).
    pub fn new(per_key: usize, total: usize) -> Self {
        Self {
            per_key,
            total,
            held: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// A slot for `key`, or which cap refused it.
    pub fn take(self: &Arc<Self>, key: K) -> Result<Slot<K>, SlotRefused> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (by_key, all) = &mut *held;
        if self.total > 0 && *all >= self.total {
            return Err(SlotRefused::Total);
        }
        let count = by_key.entry(key.clone()).or_insert(0);
        if self.per_key > 0 && *count >= self.per_key {
            return Err(SlotRefused::Key);
        }
        *count += 1;
        *all += 1;
        Ok(Slot {
            table: Arc::clone(self),
            key: Some(key),
        })
    }

    /// Slots held now by everyone.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

/// One slot of a key; dropping it gives it back.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    table: Arc<Slots<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut held = self
            .table
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (by_key, all) = &mut *held;
        *all = all.saturating_sub(1);
        if let Some(count) = by_key.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_cap_everyone_the_total_and_slots_come_back() {
        let slots = Arc::new(Slots::new(2, 3));
        let a1 = slots.take("a");
        let a2 = slots.take("a");
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(slots.take("a").err(), Some(SlotRefused::Key));
        let b1 = slots.take("b");
        assert!(b1.is_ok());
        assert_eq!(slots.take("c").err(), Some(SlotRefused::Total));
        assert_eq!(slots.held(), 3);
        drop(a1);
        assert_eq!(slots.held(), 2);
        let again = slots.take("a");
        assert!(again.is_ok(), "a dropped slot is given back");
        drop((a2, b1, again));
        assert_eq!(slots.held(), 0);
        let unlimited = Arc::new(Slots::new(0, 0));
        let many: Vec<_> = (0..100).map(|_| unlimited.take(1)).collect();
        assert!(many.iter().all(Result::is_ok), "0: no cap");
    }
}
