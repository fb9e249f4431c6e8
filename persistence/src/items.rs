//! Items and their stock.

use sqlx::FromRow;
use surge_domain::{
    Event, EventType, ItemId, ItemName, MAX_STOCK, Money, PurchaseLimit, RestockQuantity,
    StockLevel,
};

use crate::outbox;
use crate::{Database, PersistenceError, now_millis};

/// An item as stored. `available` is the units no one holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    /// Database id.
    pub id: ItemId,
    /// Display name.
    pub name: String,
    /// Unit price in the smallest currency unit.
    pub price: i64,
    /// Units still available to buyers.
    pub available: i64,
    /// Units one member may hold in live orders of this item; `None`: no limit.
    pub max_per_member: Option<i64>,
}

#[derive(FromRow)]
struct ItemRow {
    id: i64,
    name: String,
    price: i64,
    available: i64,
    max_per_member: Option<i64>,
}

impl From<ItemRow> for ItemRecord {
    fn from(row: ItemRow) -> Self {
        Self {
            id: ItemId::from_db(row.id),
            name: row.name,
            price: row.price,
            available: row.available,
            max_per_member: row.max_per_member,
        }
    }
}

/// A search over items, in id order, one page at a time.
#[derive(Debug, Clone, Default)]
pub struct ItemSearch {
    /// Name contains this text (case-insensitive for ASCII).
    pub name_contains: Option<String>,
    /// Lowest price, inclusive.
    pub min_price: Option<Money>,
    /// Highest price, inclusive.
    pub max_price: Option<Money>,
    /// Only items with a larger id (the cursor).
    pub after: Option<ItemId>,
    /// Rows to return.
    pub limit: u32,
}

/// Escapes LIKE wildcards so user text matches literally.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl Database {
    /// Creates an item with its initial stock.
    pub async fn insert_item(
        &self,
        name: &ItemName,
        price: Money,
        stock: StockLevel,
        limit: Option<PurchaseLimit>,
    ) -> Result<ItemRecord, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let row: ItemRow = sqlx::query_as(
            "INSERT INTO items (name, price, available, max_per_member, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING id, name, price, available, max_per_member",
        )
        .bind(name.as_str())
        .bind(price.get())
        .bind(stock.get())
        .bind(limit.map(PurchaseLimit::get))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let payload = serde_json::json!({
            "itemId": row.id, "name": row.name, "price": row.price, "stock": row.available,
            "maxPerMember": row.max_per_member,
        });
        outbox::append(
            &mut tx,
            &Event::new(EventType::ItemCreated, row.id, None, now, payload),
        )
        .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    /// The item with this id, if any.
    pub async fn item_by_id(&self, id: ItemId) -> Result<Option<ItemRecord>, PersistenceError> {
        let row: Option<ItemRow> = sqlx::query_as(
            "SELECT i.id, i.name, i.price, i.available + COALESCE(a.units, 0) AS available, \
                    i.max_per_member \
                 FROM items i LEFT JOIN stock_allotments a ON a.item_id = i.id WHERE i.id = $1",
        )
        .bind(id.get())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(Into::into))
    }

    /// One page of items matching `search`, in ascending id order.
    pub async fn search_items(
        &self,
        search: &ItemSearch,
    ) -> Result<Vec<ItemRecord>, PersistenceError> {
        let pattern = like_pattern(search.name_contains.as_deref().unwrap_or(""));
        let rows: Vec<ItemRow> = sqlx::query_as(
            "SELECT i.id, i.name, i.price, i.available + COALESCE(a.units, 0) AS available, \
                    i.max_per_member \
             FROM items i LEFT JOIN stock_allotments a ON a.item_id = i.id \
             WHERE i.id > $1 AND LOWER(i.name) LIKE $2 ESCAPE '\\' AND i.price >= $3 AND i.price <= $4 \
             ORDER BY i.id LIMIT $5",
        )
        .bind(search.after.map_or(0, ItemId::get))
        .bind(pattern)
        .bind(search.min_price.map_or(0, Money::get))
        .bind(search.max_price.map_or(i64::MAX, Money::get))
        .bind(i64::from(search.limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Adds units to an item. Unknown item: [`PersistenceError::NotFound`]; a total above
    /// [`MAX_STOCK`]: [`PersistenceError::LimitExceeded`].
    pub async fn restock_item(
        &self,
        id: ItemId,
        quantity: RestockQuantity,
    ) -> Result<ItemRecord, PersistenceError> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let row: Option<ItemRow> = sqlx::query_as(
            "UPDATE items SET available = available + $1, updated_at = $2 \
             WHERE id = $3 AND available + $1 + COALESCE((SELECT units FROM stock_allotments \
               WHERE item_id = $3), 0) <= $4 RETURNING id, name, price, available, max_per_member",
        )
        .bind(quantity.get())
        .bind(now)
        .bind(id.get())
        .bind(MAX_STOCK)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_some() {
            let payload = serde_json::json!({"itemId": id.get(), "quantity": quantity.get()});
            let event = Event::new(EventType::ItemRestocked, id.get(), None, now, payload);
            outbox::append(&mut tx, &event).await?;
        }
        tx.commit().await?;
        match row {
            Some(_) => self.item_by_id(id).await?.ok_or(PersistenceError::NotFound),
            None if self.item_by_id(id).await?.is_some() => Err(PersistenceError::LimitExceeded),
            None => Err(PersistenceError::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
        assert_eq!(like_pattern("Shoe"), "%shoe%");
    }
}
