//! `trove bench`: an open-loop, coordinated-omission-correct load generator for trove and
//! its peers, and the reports performance engineers read.

pub mod generator;
pub mod report;
pub mod run;
pub mod trove_protocol;
pub mod workload;
