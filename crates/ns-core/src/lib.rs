//! Shared by the ns-* stages: the state document, the sync protocol, the stage runner and
//! exec helpers. Stage logic lives in the stages; the only `unsafe` code of the toolkit is in
//! [`sys`].

pub mod error;
pub mod exec;
pub mod stage;
pub mod state;
pub mod sync;
pub mod sys;

pub use error::{Context, Error, Result};
