pub mod auth;
pub mod items;
pub mod ops;
pub mod users;
