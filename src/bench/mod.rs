//! `trove bench`: an open-loop, coordinated-omission-correct load generator for trove and
//! its peers, and the reports performance engineers read.

pub mod calibrate;
pub mod generator;
pub mod redis;
pub mod report;
pub mod resp;
pub mod run;
pub mod trove_protocol;
pub mod workload;
