//! The last item records read from the database, so item pages keep answering while the
//! database is down (its breaker open or a read failing). Such answers carry
//! `x-surge-stale: true`: the stock shown is the last one read, not a live figure.

use std::collections::HashMap;
use std::sync::Mutex;

use surge_persistence::items::ItemRecord;

/// Items kept at most. Beyond it new items are not cached (the hot ones of a sale are read
/// first and stay), so the cache can never grow without bound.
const MAX_CACHED_ITEMS: usize = 100_000;

/// Last-known item records.
#[derive(Debug, Default)]
pub struct LastKnownItems {
    /// A std mutex: held for one map operation, never across an await.
    items: Mutex<HashMap<i64, ItemRecord>>,
}

impl LastKnownItems {
    /// Remembers a record just read from the database.
    pub fn remember(&self, item: &ItemRecord) {
        if let Ok(mut items) = self.items.lock()
            && (items.len() < MAX_CACHED_ITEMS || items.contains_key(&item.id.get()))
        {
            items.insert(item.id.get(), item.clone());
        }
    }

    /// The last record read for this item, if any.
    pub fn recall(&self, item_id: i64) -> Option<ItemRecord> {
        self.items.lock().ok()?.get(&item_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use surge_domain::ItemId;

    use super::*;

    #[test]
    fn remembers_the_latest_read() {
        let cache = LastKnownItems::default();
        let mut item = ItemRecord {
            id: ItemId::from_db(7),
            name: "Hat".into(),
            price: 10,
            available: 5,
            max_per_member: None,
        };
        assert!(cache.recall(7).is_none());
        cache.remember(&item);
        item.available = 4;
        cache.remember(&item);
        assert_eq!(cache.recall(7).unwrap().available, 4);
    }
}
