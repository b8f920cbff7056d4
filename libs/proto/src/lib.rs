//! The gRPC contracts of every Helix service, generated at build time from `proto/`.
//!
//! Only this crate knows the generated code's layout; services and the gateway name
//! types through `helix_proto::v1`.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("helix.v1");
}

pub use prost_types::Timestamp;

/// Encoded `FileDescriptorSet` of all Helix protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/helix_descriptor.bin"));

/// Fully qualified gRPC service names, as health checks and reflection know them.
pub mod service_names {
    pub const STORAGE: &str = "helix.v1.StorageService";
    pub const SEARCH: &str = "helix.v1.SearchService";
    pub const GRAPH: &str = "helix.v1.GraphService";
    pub const LLM_ROUTER: &str = "helix.v1.LlmRouterService";
    pub const ORCHESTRATOR: &str = "helix.v1.OrchestratorService";
    pub const JOBS: &str = "helix.v1.JobsService";
    pub const NOTIFICATIONS: &str = "helix.v1.NotificationsService";
    pub const GATEWAY: &str = "helix.v1.GatewayService";
}
