pub mod admin;
pub mod auth;
pub mod coupons;
pub mod items;
pub mod ops;
pub mod orders;
pub mod users;
