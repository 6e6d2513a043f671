//! End-to-end tests: the real `s3ma` binary against real S3-compatible
//! servers (s3s-fs and moto's server) started by the harness.

mod harness;

mod backup;
mod checksums;
mod config;
mod crash;
mod daemon;
mod destinations;
mod docs;
mod errors;
mod faults;
mod headers;
mod health;
mod inotify;
mod ls;
mod metadata;
mod mistakes;
mod model;
mod names;
mod restore;
mod scale;
mod sse;
mod sync;
mod verify;
mod watch;
