//! The manager's events (SPEC §8): one typed enum, serialized as `{"type": name, ...}`.
//!
//! No event carries a secret or a prompt: only ids, states, error kinds,
//! statuses and durations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use switchyard_events::BusEvent;

use crate::state::{Health, Lifecycle};

/// One event with its wall-clock timestamp.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProviderEvent {
    /// When it happened (RFC 3339, milliseconds).
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl ProviderEvent {
    /// An event stamped now.
    pub fn now(kind: EventKind) -> Self {
        Self {
            timestamp: SystemTime::now(),
            kind,
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> u64 {
        self.timestamp
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The provider this event is about, if any.
    pub fn provider_id(&self) -> Option<&str> {
        use EventKind::*;
        match &self.kind {
            ProviderAdded { provider_id, .. }
            | DynamicProviderAdded { provider_id, .. }
            | ProviderRemoved { provider_id }
            | ProviderUpdated { provider_id, .. }
            | ProviderReset { provider_id, .. }
            | ProviderStateChanged { provider_id, .. }
            | ProviderHealthCheck { provider_id, .. }
            | ProviderHealthChanged { provider_id, .. }
            | ProviderRequestFailed { provider_id, .. }
            | CooldownStarted { provider_id, .. }
            | CircuitOpened { provider_id, .. }
            | CircuitHalfOpen { provider_id, .. }
            | CircuitClosed { provider_id, .. }
            | StreamResumed { provider_id, .. } => Some(provider_id),
            ProviderSwitch { to_provider, .. } => Some(to_provider),
            ConfigReloaded { .. } | ConfigReloadFailed { .. } | RouteUpdated { .. } => None,
        }
    }
}

fn millis(d: &Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What happened. Durations are serialized as `*_ms` integers.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A provider joined the registry.
    ProviderAdded {
        /// Provider id.
        provider_id: String,
        /// Its type.
        provider_type: String,
        /// Models it serves.
        models: Vec<String>,
    },
    /// A provider was added at run time (after `provider_added`).
    DynamicProviderAdded {
        /// Provider id.
        provider_id: String,
        /// Result of the pre-activation check, if one ran.
        health: Option<Health>,
    },
    /// A provider left the registry.
    ProviderRemoved {
        /// Provider id.
        provider_id: String,
    },
    /// A provider's config was replaced.
    ProviderUpdated {
        /// Provider id.
        provider_id: String,
        /// Whether health and stats were kept (type, URL and key unchanged).
        state_kept: bool,
    },
    /// Failure counters, cooldowns and circuits were cleared.
    ProviderReset {
        /// Provider id.
        provider_id: String,
        /// Health after the post-reset check.
        health: Health,
    },
    /// A lifecycle transition.
    ProviderStateChanged {
        /// Provider id.
        provider_id: String,
        /// Before.
        from: Lifecycle,
        /// After.
        to: Lifecycle,
    },
    /// An active health check ran.
    ProviderHealthCheck {
        /// Provider id.
        provider_id: String,
        /// Whether it passed.
        success: bool,
        /// How long it took.
        #[serde(rename = "duration_ms", serialize_with = "ser_millis")]
        duration: Duration,
        /// Error kind when it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A deployment's (or provider's) health changed.
    ProviderHealthChanged {
        /// Provider id.
        provider_id: String,
        /// The deployment's model; `None` for provider-wide changes.
        model: Option<String>,
        /// Before.
        from: Health,
        /// After.
        to: Health,
    },
    /// A request moved from one deployment to another.
    ProviderSwitch {
        /// Where it failed.
        from_provider: String,
        /// Model that failed.
        from_model: String,
        /// Where it goes next.
        to_provider: String,
        /// Model tried next (may be a fallback).
        to_model: String,
        /// Error kind that caused the switch.
        reason: String,
    },
    /// One attempt failed.
    ProviderRequestFailed {
        /// Provider id.
        provider_id: String,
        /// Deployment model.
        model: String,
        /// Attempt number within the request.
        attempt: u32,
        /// Upstream status, if any.
        status: Option<u16>,
        /// Error kind.
        error_kind: String,
        /// Attempt duration.
        #[serde(rename = "duration_ms", serialize_with = "ser_millis")]
        duration: Duration,
        /// Request id, if known.
        request_id: Option<String>,
    },
    /// A deployment is cooling down (429 / Retry-After).
    CooldownStarted {
        /// Provider id.
        provider_id: String,
        /// Deployment model.
        model: String,
        /// Cooldown length.
        #[serde(rename = "duration_ms", serialize_with = "ser_millis")]
        duration: Duration,
    },
    /// A deployment's circuit opened (ejected).
    CircuitOpened {
        /// Provider id.
        provider_id: String,
        /// Deployment model (`*` for a provider-wide ejection).
        model: String,
        /// Ejection length.
        #[serde(rename = "ejection_ms", serialize_with = "ser_millis")]
        ejection: Duration,
    },
    /// A deployment's ejection ended: one probe request may go.
    CircuitHalfOpen {
        /// Provider id.
        provider_id: String,
        /// Deployment model.
        model: String,
    },
    /// A deployment's probe succeeded: it is back.
    CircuitClosed {
        /// Provider id.
        provider_id: String,
        /// Deployment model.
        model: String,
        /// Time from opening to closing.
        #[serde(rename = "recovery_ms", serialize_with = "ser_millis")]
        recovery: Duration,
    },
    /// A cut stream was resumed on another attempt.
    StreamResumed {
        /// Provider continuing the stream.
        provider_id: String,
        /// Its model.
        model: String,
        /// `prefill` or `replay`.
        mode: String,
        /// Characters already delivered.
        resumed_after_chars: u64,
    },
    /// A route (fallbacks, strategy, blue-green split ...) was set or removed.
    RouteUpdated {
        /// The route's model.
        model: String,
        /// Whether the route was removed.
        removed: bool,
    },
    /// A configuration reload was applied.
    ConfigReloaded {
        /// Providers added.
        added: Vec<String>,
        /// Providers changed.
        changed: Vec<String>,
        /// Providers removed.
        removed: Vec<String>,
    },
    /// A configuration reload was refused; the old config keeps serving.
    ConfigReloadFailed {
        /// Why (paths and messages, no secrets).
        error: String,
    },
}

fn ser_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(millis(d))
}

impl EventKind {
    /// The event's snake_case name.
    pub fn name(&self) -> &'static str {
        use EventKind::*;
        match self {
            ProviderAdded { .. } => "provider_added",
            DynamicProviderAdded { .. } => "dynamic_provider_added",
            ProviderRemoved { .. } => "provider_removed",
            ProviderUpdated { .. } => "provider_updated",
            ProviderReset { .. } => "provider_reset",
            ProviderStateChanged { .. } => "provider_state_changed",
            ProviderHealthCheck { .. } => "provider_health_check",
            ProviderHealthChanged { .. } => "provider_health_changed",
            ProviderSwitch { .. } => "provider_switch",
            ProviderRequestFailed { .. } => "provider_request_failed",
            CooldownStarted { .. } => "cooldown_started",
            CircuitOpened { .. } => "circuit_opened",
            CircuitHalfOpen { .. } => "circuit_half_open",
            CircuitClosed { .. } => "circuit_closed",
            StreamResumed { .. } => "stream_resumed",
            RouteUpdated { .. } => "route_updated",
            ConfigReloaded { .. } => "config_reloaded",
            ConfigReloadFailed { .. } => "config_reload_failed",
        }
    }
}

impl BusEvent for ProviderEvent {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn trace(&self) {
        let provider = self.provider_id().unwrap_or("-");
        match &self.kind {
            EventKind::ProviderRequestFailed { .. }
            | EventKind::CircuitOpened { .. }
            | EventKind::ConfigReloadFailed { .. } => {
                tracing::warn!(event = self.name(), provider = %provider, details = ?self.kind, "provider event");
            }
            _ => {
                tracing::info!(event = self.name(), provider = %provider, details = ?self.kind, "provider event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_type_timestamp_and_millis() {
        let event = ProviderEvent {
            timestamp: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            kind: EventKind::CircuitOpened {
                provider_id: "p".into(),
                model: "m".into(),
                ejection: Duration::from_secs(5),
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "circuit_opened",
                "timestamp": "2023-11-14T22:13:20.123Z",
                "provider_id": "p", "model": "m", "ejection_ms": 5000
            })
        );
        assert_eq!(event.name(), "circuit_opened");
        assert_eq!(event.provider_id(), Some("p"));
        assert_eq!(event.unix_millis(), 1_700_000_000_123);
    }
}
