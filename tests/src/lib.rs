//! The harness for dataward's end-to-end tests and load generator: a real
//! mosquitto as the cloud, the real `dataward` binary, real MQTT clients.
//!
//! - [`cloud`]: [`Cloud`], a mosquitto on a free loopback port, stoppable
//!   and restartable on the same port (with persistence, so sessions
//!   survive); [`TestCa`] for its TLS listener.
//! - [`gateway`]: [`Gateway`], the `dataward` binary on a data directory,
//!   with its ports read from its startup line; [`cli`] and [`add_device`],
//!   the command line as a user runs it.
//! - [`clients`]: rumqttc devices and cloud subscribers, and [`collect`].
//! - [`fuzz`]: a seeded packet fuzzer for the device port.
//! - [`http`]: a minimal HTTP/1.1 client for the web UI's tests.

pub mod clients;
pub mod cloud;
pub mod fuzz;
pub mod gateway;
pub mod http;
pub mod policy_fuzz;

pub use clients::*;
pub use cloud::*;
pub use gateway::*;
pub use http::*;
