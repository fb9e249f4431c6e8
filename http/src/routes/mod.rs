pub mod admin;
pub mod auth;
pub mod coupons;
pub mod items;
pub mod my_page;
pub mod ops;
pub mod orders;
pub mod users;
