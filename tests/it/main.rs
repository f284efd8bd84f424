//! Integration tests: one binary, real `redis-server` and `enigma-server` processes, real
//! HTTP and WebSocket clients.

pub mod conformance;
mod harness;
mod load;
mod replicas;
mod startup;
