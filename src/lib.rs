//! Surge: a flash-sale e-commerce API built as an actor system.
//!
//! This crate wires the others into a node: [`config::Config`] is read once from the
//! environment, [`startup::Application::build`] opens the database and binds the listeners, and
//! [`startup::Application::run_until_stopped`] serves until a stop signal.

pub mod config;
pub mod startup;
pub mod telemetry;

pub use config::Config;
pub use startup::{Application, StartupError, StopHandle};
