//! Runs any set of the eight services in this process. `hx up` runs all of them;
//! `hx serve <service>` runs one. The gRPC services of a process share one server
//! (and the gateway also serves REST); a service's clients reach a local peer through
//! the in-process link — the same gRPC calls as to a remote one, without sockets.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use helix_proto::service_names;
use helix_runtime::{HelixConfig, Listener, ServiceContext, admin, grpc};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Storage,
    Search,
    Graph,
    LlmRouter,
    Orchestrator,
    Jobs,
    Notifications,
    Gateway,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Storage,
        Role::Search,
        Role::Graph,
        Role::LlmRouter,
        Role::Orchestrator,
        Role::Jobs,
        Role::Notifications,
        Role::Gateway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Search => "search",
            Role::Graph => "graph",
            Role::LlmRouter => "llm-router",
            Role::Orchestrator => "orchestrator",
            Role::Jobs => "jobs",
            Role::Notifications => "notifications",
            Role::Gateway => "gateway",
        }
    }

    fn grpc_service(self) -> &'static str {
        match self {
            Role::Storage => service_names::STORAGE,
            Role::Search => service_names::SEARCH,
            Role::Graph => service_names::GRAPH,
            Role::LlmRouter => service_names::LLM_ROUTER,
            Role::Orchestrator => service_names::ORCHESTRATOR,
            Role::Jobs => service_names::JOBS,
            Role::Notifications => service_names::NOTIFICATIONS,
            Role::Gateway => service_names::GATEWAY,
        }
    }

    /// Points this role's client endpoint at `url`.
    fn set_endpoint(self, config: &mut HelixConfig, url: String) {
        let e = &mut config.endpoints;
        let slot = match self {
            Role::Storage => &mut e.storage,
            Role::Search => &mut e.search,
            Role::Graph => &mut e.graph,
            Role::LlmRouter => &mut e.llm_router,
            Role::Orchestrator => &mut e.orchestrator,
            Role::Jobs => &mut e.jobs,
            Role::Notifications => &mut e.notifications,
            Role::Gateway => &mut e.gateway,
        };
        *slot = url;
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            let names: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
            format!("unknown service {s:?}; one of: {}", names.join(", "))
        })
    }
}

/// Services running in this process. Dropping it does not stop them: call [`Node::stop`].
pub struct Node {
    pub grpc_addr: SocketAddr,
    /// `/metrics`, `/livez`, `/readyz`
    pub metrics_addr: SocketAddr,
    pub gateway_addr: Option<SocketAddr>,
    pub roles: Vec<Role>,
    ctx: ServiceContext,
    /// The REST server drains before the gRPC services it calls stop.
    rest: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Node {
    /// Binds the listeners, starts `roles` and serves them in the background. The
    /// credential vault is opened once here, for every service of the process.
    pub async fn start(mut config: HelixConfig, roles: &[Role]) -> helix_runtime::Result<Node> {
        // before any service writes into it: keys, tokens, databases and indexes live here
        helix_runtime::db::secure_home(&config.home)?;
        let credentials = helix_runtime::open_credentials(&config)?;
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        // `hx up` runs every service here: its peers are in process, and a token made in
        // its home serves the workers of this machine. `hx serve` has peers elsewhere.
        let fleet_addr = (roles.len() < Role::ALL.len()).then_some(config.grpc.addr);
        let token = grpc::fleet_token(&config, fleet_addr, &credentials)?;
        config.grpc.token = Some(token.clone());
        let max_connections = config.grpc.max_connections;
        let grpc_listener = helix_runtime::listen(Listener::Grpc, config.grpc.addr).await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let gateway_listener = match roles.contains(&Role::Gateway) {
            true => Some(helix_runtime::listen(Listener::Gateway, config.gateway.addr).await?),
            false => None,
        };
        let gateway_addr = gateway_listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let admin_listener = helix_runtime::listen(Listener::Metrics, config.metrics.addr).await?;
        let metrics_addr = admin_listener.local_addr()?;

        // Local peers are reached through the in-process link, not the network.
        for role in &roles {
            role.set_endpoint(&mut config, grpc::IN_PROCESS.to_owned());
        }
        let link = grpc::LocalLink::default();

        let bus = helix_events::connect(&config.events, "hx").await?;
        let mut ctx = ServiceContext::new(config, bus, credentials);
        ctx.local = Some(link.clone());
        let mut routes = RoutesBuilder::default();
        let mut http = None;
        for role in &roles {
            match role {
                Role::Storage => routes.add_service(helix_storage::start(&ctx).await?),
                Role::Search => routes.add_service(helix_search::start(&ctx).await?),
                Role::Graph => routes.add_service(helix_graph::start(&ctx).await?),
                Role::LlmRouter => routes.add_service(helix_llm_router::start(&ctx).await?),
                Role::Orchestrator => routes.add_service(helix_orchestrator::start(&ctx).await?),
                Role::Jobs => routes.add_service(helix_jobs::start(&ctx).await?),
                Role::Notifications => routes.add_service(helix_notifications::start(&ctx).await?),
                Role::Gateway => {
                    let gateway = helix_gateway::start(&ctx).await?;
                    http = Some(gateway.http);
                    routes.add_service(gateway.grpc)
                }
            };
        }

        let names: Vec<&'static str> = roles.iter().map(|r| r.grpc_service()).collect();
        let router = grpc::GrpcRouter::new(routes.routes(), &names, ctx.metrics.clone()).await?;
        admin::spawn(&ctx, admin_listener);
        link.bind(router.routes());
        let shutdown = ctx.shutdown.clone();
        ctx.tasks.spawn(async move {
            if let Err(error) = router.serve(grpc_listener, &token, max_connections, shutdown.clone()).await {
                tracing::error!(%error, "grpc server failed, stopping");
                shutdown.cancel();
            }
        });
        let rest = match (gateway_listener, http) {
            (Some(listener), Some(http)) => {
                let node_shutdown = ctx.shutdown.clone();
                let rest_shutdown = ctx.shutdown.child_token();
                let drain = rest_shutdown.clone();
                let edge = ctx.config.gateway.clone();
                let task = tokio::spawn(async move {
                    if let Err(error) = helix_gateway::serve_http(listener, http, &edge, drain).await {
                        tracing::error!(%error, "rest server failed, stopping");
                        node_shutdown.cancel();
                    }
                });
                Some((rest_shutdown, task))
            }
            _ => None,
        };
        tracing::info!(
            grpc = %grpc_addr,
            rest = ?gateway_addr,
            services = ?roles.iter().map(|r| r.name()).collect::<Vec<_>>(),
            "helix node started"
        );
        Ok(Node { grpc_addr, metrics_addr, gateway_addr, roles, ctx, rest })
    }

    /// The event bus of this node's services (the in-process one on the embedded default).
    pub fn bus(&self) -> std::sync::Arc<dyn helix_events::EventBus> {
        self.ctx.bus.clone()
    }

    pub fn gateway_url(&self) -> Option<String> {
        self.gateway_addr.map(|addr| format!("http://{addr}"))
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics_addr)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// A channel to this node's gRPC listener over TCP carrying its fleet token,
    /// connected when it returns.
    pub async fn grpc_channel(&self) -> helix_runtime::Result<grpc::GrpcChannel> {
        let token = self.ctx.config.grpc.token.as_ref();
        grpc::connect(&self.grpc_url(), Duration::from_secs(120), self.ctx.metrics.clone(), token).await
    }

    /// Resolves when the node is shutting down (a server failed, or [`Node::stop`] ran).
    pub async fn stopped(&self) {
        self.ctx.shutdown.cancelled().await;
    }

    /// Stops accepting work, finishes what is in flight and waits for every task.
    pub async fn stop(self) {
        if let Some((shutdown, task)) = self.rest {
            shutdown.cancel();
            let _ = task.await;
        }
        self.ctx.stop().await;
    }
}
