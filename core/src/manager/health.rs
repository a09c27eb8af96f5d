//! Active health checks (SPEC §6): a background task probing every provider.
//!
//! Every `health_check_interval` (±10 % jitter, so a fleet does not probe in
//! lockstep) each enabled provider whose mode is not `none` gets one check,
//! bounded by `health_check_timeout`. A failure marks the provider unhealthy
//! provider-wide; a pass after a failure measures recovery time, clears a
//! provider-wide ejection and, with `auto_recovery_enabled`, re-admits its
//! ejected deployments to half-open. A passing check never closes a
//! deployment's circuit: only that deployment's probe request does.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinHandle;

use crate::event::EventKind;
use crate::registry::ProviderEntry;
use crate::state::{Health, Lifecycle};

use super::ProviderManager;

/// The running health checker; dropping it stops the task.
#[derive(Debug)]
pub struct HealthChecker {
    task: JoinHandle<()>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ProviderManager {
    /// Starts active health checks in the background (needs a tokio runtime).
    pub fn start_health_checker(&self) -> HealthChecker {
        let manager = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let interval = manager.inner.options.health_check_interval;
                let jitter = rand::rng().random_range(0.9..=1.1);
                tokio::time::sleep(interval.mul_f64(jitter)).await;
                manager.run_health_checks_once().await;
            }
        });
        HealthChecker { task }
    }

    /// One round of active checks over every provider, concurrently.
    pub async fn run_health_checks_once(&self) {
        let registry = self.inner.registry.load_full();
        let checks = registry
            .providers
            .iter()
            .filter(|entry| entry.config.enabled && !entry.config.health_check.is_none())
            .map(|entry| self.check_provider(Arc::clone(entry)));
        futures_util::future::join_all(checks).await;
    }

    async fn check_provider(&self, entry: Arc<ProviderEntry>) {
        let id = entry.config.id.as_str();
        let passed = self
            .inner
            .run_health_check(id, &entry.provider)
            .await
            .is_ok();
        let now_ms = self.inner.clock.now_ms();
        entry.state.record_check(passed);
        let to = if passed {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        let unhealthy_since = entry.state.unhealthy_since_ms();
        let from = entry.state.set_health(to, now_ms);
        if from == to {
            return;
        }
        if self.inner.options.enable_metrics {
            metrics::gauge!("switchyard_provider_health", "provider" => id.to_owned())
                .set(to.gauge());
        }
        self.inner.emit(EventKind::ProviderHealthChanged {
            provider_id: id.to_owned(),
            model: None,
            from,
            to,
        });
        if passed {
            let recovery = Duration::from_millis(now_ms.saturating_sub(unhealthy_since));
            self.inner.counters.recovery(recovery);
            if self.inner.options.enable_metrics {
                metrics::histogram!("switchyard_recovery_seconds").record(recovery.as_secs_f64());
            }
            entry.state.clear_ejection();
            if self.inner.options.auto_recovery_enabled {
                for deployment in &entry.deployments {
                    deployment.state().end_ejection(now_ms);
                }
            }
            self.inner
                .set_lifecycle(&entry.state, id, Lifecycle::Recovered);
        } else {
            self.inner
                .set_lifecycle(&entry.state, id, Lifecycle::FaultDetected);
        }
    }
}
