//! Validated domain types shared by every Surge crate.
//!
//! Every value type here can only be built through a `parse` function that
//! enforces its rules, so holding one is proof the value is valid. Parsing
//! failures are reported as [`ValidationError`], naming the offending field by
//! its JSON (camelCase) name.
#![warn(missing_docs)]

mod coupon;
mod error;
mod event;
mod ids;
mod item;
mod member;
mod my_page;
mod order;
mod paging;
mod status;
mod text;
pub mod time_fmt;

pub use coupon::*;
pub use error::*;
pub use event::*;
pub use ids::*;
pub use item::*;
pub use member::*;
pub use my_page::*;
pub use order::*;
pub use paging::*;
pub use status::*;
