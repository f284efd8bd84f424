//! The verifiable key directory (key transparency).
//!
//! - `settings`: `[directory]`.

pub mod settings;
