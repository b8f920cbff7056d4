//! End-to-end tests: real services on port 0, real SQLite / PostgreSQL / NATS.
//! One test binary (compile time); each area of behaviour is a module. Tests that must
//! hold on both columns of the design run twice, `embedded` and `fleet`.

mod audit;
mod auth;
mod bad_input;
mod cli;
mod edge;
mod events;
mod fleet;
mod gateway;
mod graph;
mod grpc;
mod jobs;
mod keychain;
mod llm;
mod model;
mod nodes;
mod observability;
mod request_shapes;
mod scheduler;
mod schema;
mod search;
mod secrets;
mod setup;
mod support;
mod workflows;

/// Generates `<name>::embedded` and `<name>::fleet` tests calling `<name>(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(helix_testkit::Backend::Embedded).await.unwrap()
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fleet() {
                super::$name(helix_testkit::Backend::Fleet).await.unwrap()
            }
        }
    )*};
}
