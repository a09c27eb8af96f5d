//! Switchyard core: the provider manager, its traits and its state.
//!
//! Crate map:
//! - [`types`]: vendor-neutral chat / embeddings / completions types.
//! - [`provider`]: the [`Provider`] trait adapters implement, and [`ProviderFactory`].
//! - [`strategy`]: the [`SelectionStrategy`] trait; [`RoundRobin`] is built in.
//! - [`error`]: classified errors (`is_retryable`, `should_switch`, `counts_for_breaker`, `severity`, `kind`).
//! - [`config`]: provider, route and manager configuration with `validate()`.
//! - [`event`]: the manager's events, published on a `switchyard_events::EventBus`.
//! - [`state`]: per-deployment and per-provider atomics (health, circuits, cooldowns, latency).
//! - [`registry`]: deployments and the model → deployments index.
//! - [`manager`]: [`ProviderManager`], the seed's API.
//! - [`stream`]: first-token / idle timeouts and the stream completeness rule.
//! - `testing` (feature `test-util`): a scriptable provider.
//!
//! Use it alone with your own provider:
//!
//! ```
//! use std::sync::Arc;
//! use switchyard_core::{ChatMessage, ChatRequest, ProviderConfig, ProviderManager, RequestType};
//! use switchyard_core::testing::ScriptedProvider;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let manager = ProviderManager::builder()
//!     .provider_instance(ProviderConfig::new("a", "mock", ["gpt-4o"]), ScriptedProvider::shared("from a"))
//!     .provider_instance(ProviderConfig::new("b", "mock", ["gpt-4o"]), ScriptedProvider::shared("from b"))
//!     .build()
//!     .unwrap();
//!
//! let handle = manager.get_best_provider_for_request("gpt-4o", RequestType::Chat).unwrap();
//! let request = ChatRequest {
//!     model: "gpt-4o".into(),
//!     messages: vec![ChatMessage::text("user", "hi")],
//!     ..Default::default()
//! };
//! let response = handle.chat(request, &manager.call_context("gpt-4o")).await.unwrap();
//! assert_eq!(response.choices[0].message.text_content().as_deref(), Some("from a"));
//! # });
//! ```

pub mod chunk;
pub mod config;
pub mod error;
pub mod event;
pub mod json;
pub mod limits;
pub mod manager;
pub mod provider;
pub mod registry;
pub mod round_robin;
pub mod state;
pub mod strategy;
pub mod stream;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod types;

/// UTF-8 text in a shared `Bytes` buffer: stream event data kept as a
/// slice of the read it arrived in, not copied.
pub use bytestring::ByteString;
pub use config::{
    GatewayConfig, HealthCheckMode, ManagerOptions, MockConfig, ModelConfig, ProviderConfig,
    RouteConfig, Secret, StreamResume,
};
pub use error::{
    AttemptRecord, ConfigError, ConfigIssue, ManagerError, ProviderError, Severity, TimeoutPhase,
    UpstreamCategory, UpstreamError,
};
pub use event::{EventKind, ProviderEvent};
pub use json::RawChatResponse;
pub use manager::{
    AddOptions, AddOutcome, AdmissionControl, Attempt, CallGuard, ConfigDiff, FailoverOptions,
    FailoverResult, HealthChecker, ManagedStream, ManagerBuilder, MetricsSnapshot,
    ProviderCounters, ProviderHandle, ProviderLoadStats, ProviderManager, SelectRequest, Unlimited,
};
pub use provider::{CallContext, Capabilities, NoFactory, Pricing, Provider, ProviderFactory};
pub use registry::Deployment;
pub use round_robin::RoundRobin;
pub use state::{
    CircuitState, Clock, DeploymentState, Health, Lifecycle, OpenCircuits, ProviderState,
};
pub use strategy::{Candidate, CandidateSet, RequestContext, SelectionStrategy, StrategyRegistry};
pub use switchyard_events::{BusEvent, EventBus, Received, Subscription};
pub use types::*;
