//! gateway-systemd: run an API Gateway installation (Node Manager and instances in groups)
//! as systemd units. The binaries under `src/bin/` only parse arguments and call in here.

pub mod backup;
pub mod ctl;
pub mod demo;
pub mod docs;
pub mod drain;
pub mod generator;
pub mod initd;
pub mod install;
pub mod journal;
pub mod launch;
pub mod systemd;
pub mod units;
