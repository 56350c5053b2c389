//! One module per `trellis` command: its arguments and what it runs.

pub mod audit;
pub mod config;
pub mod demo;
pub mod erasure;
pub mod gdpr;
pub mod inspect;
pub mod registry;
pub mod stack;
pub mod state;
pub mod topology;
