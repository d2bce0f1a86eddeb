//! Iteration-level scheduling: which requests run in the next step and with how many tokens.

pub mod scheduler;

pub use scheduler::{ScheduledRequest, Scheduler, SchedulerConfig, SchedulerOutput};
